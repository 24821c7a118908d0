package tunnel

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// superPacket builds a GSO super-packet as the kernel hands it to a TUN
// with offloads: one IP header (IPv4 with DF and an option when opt, or
// IPv6) and one TCP (with timestamps) or UDP header over payload, the
// transport checksum left partial.
func superPacket(v6, udp, opt bool, flags byte, payload []byte) []byte {
	var l4 []byte
	if udp {
		l4 = make([]byte, 8+len(payload))
		binary.BigEndian.PutUint16(l4[0:], 5353)
		binary.BigEndian.PutUint16(l4[2:], 4789)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		binary.BigEndian.PutUint16(l4[6:], 0x1234)
		copy(l4[8:], payload)
	} else {
		l4 = make([]byte, 32+len(payload))
		binary.BigEndian.PutUint16(l4[0:], 40000)
		binary.BigEndian.PutUint16(l4[2:], 5201)
		binary.BigEndian.PutUint32(l4[4:], 0xfffff000) // sequence numbers wrap
		binary.BigEndian.PutUint32(l4[8:], 777)
		l4[12] = 8 << 4
		l4[13] = flags
		binary.BigEndian.PutUint16(l4[14:], 502)
		binary.BigEndian.PutUint16(l4[16:], 0xbeef)
		copy(l4[20:], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
		copy(l4[32:], payload)
	}
	proto := byte(protoTCP)
	if udp {
		proto = protoUDP
	}
	if v6 {
		p := make([]byte, 40+len(l4))
		p[0] = 0x60
		binary.BigEndian.PutUint16(p[4:], uint16(len(l4)))
		p[6], p[7] = proto, 64
		s, d := netip.MustParseAddr("fd00::1").As16(), netip.MustParseAddr("fd00::2:1").As16()
		copy(p[8:], s[:])
		copy(p[24:], d[:])
		copy(p[40:], l4)
		return p
	}
	ihl := 20
	if opt {
		ihl = 24
	}
	p := make([]byte, ihl+len(l4))
	p[0] = 0x40 | byte(ihl/4)
	p[1] = 0x02 // ECT(0)
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], 0xfffe) // IDs wrap
	binary.BigEndian.PutUint16(p[6:], 0x4000)
	p[8], p[9] = 64, proto
	copy(p[12:], []byte{10, 244, 1, 7, 10, 244, 2, 9})
	if opt {
		copy(p[20:], []byte{1, 1, 1, 0}) // NOPs and end of options
	}
	binary.BigEndian.PutUint16(p[10:], ^slowChecksum(p[:ihl]))
	copy(p[ihl:], l4)
	return p
}

// refSegments segments pkt the straightforward way: a whole copy of every
// segment, fields set one by one, checksums with the RFC 1071 reference.
func refSegments(pkt []byte, ipLen, hdrLen int, udp bool, mss int) [][]byte {
	var out [][]byte
	payload := pkt[hdrLen:]
	n := (len(payload) + mss - 1) / mss
	for i := range n {
		chunk := payload[i*mss : min(len(payload), (i+1)*mss)]
		seg := append(append([]byte(nil), pkt[:hdrLen]...), chunk...)
		var pseudo []byte
		if seg[0]>>4 == 4 {
			binary.BigEndian.PutUint16(seg[2:], uint16(len(seg)))
			binary.BigEndian.PutUint16(seg[4:], binary.BigEndian.Uint16(pkt[4:])+uint16(i))
			seg[10], seg[11] = 0, 0
			binary.BigEndian.PutUint16(seg[10:], ^slowChecksum(seg[:ipLen]))
			pseudo = append(pseudo, seg[12:20]...)
		} else {
			binary.BigEndian.PutUint16(seg[4:], uint16(len(seg)-40))
			pseudo = append(pseudo, seg[8:40]...)
		}
		l4 := seg[ipLen:]
		csumAt := 16
		proto := byte(protoTCP)
		if udp {
			binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
			csumAt, proto = 6, protoUDP
		} else {
			binary.BigEndian.PutUint32(l4[4:], binary.BigEndian.Uint32(pkt[ipLen+4:])+uint32(i*mss))
			if i != n-1 {
				l4[13] &^= tcpFIN | tcpPSH
			}
			if i != 0 {
				l4[13] &^= tcpCWR
			}
		}
		l4[csumAt], l4[csumAt+1] = 0, 0
		pseudo = append(pseudo, 0, proto, byte(len(l4)>>8), byte(len(l4)))
		c := ^slowChecksum(append(pseudo, l4...))
		if udp && c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(l4[csumAt:], c)
		out = append(out, seg)
	}
	return out
}

func TestGSOHeadersMatchReference(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, tc := range []struct {
		name         string
		v6, udp, opt bool
	}{
		{"tcp4", false, false, false},
		{"tcp4-ipopt", false, false, true},
		{"tcp6", true, false, false},
		{"udp4", false, true, false},
		{"udp6", true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, size := range []int{1, 100, 1397, 1398, 1399, 2796, 5000, 65000 - 120} {
				for _, mss := range []int{1398, 1337, 48, 1} {
					if size/mss > maxSuperSegs-1 {
						continue
					}
					payload := make([]byte, size)
					for i := range payload {
						payload[i] = byte(r.Uint32())
					}
					flags := byte(tcpCWR | tcpPSH | tcpFIN | 0x10) // ACK
					pkt := superPacket(tc.v6, tc.udp, tc.opt, flags, payload)
					h := vnetHdr{flags: vnetFlagNeedsCsum, gsoSize: uint16(mss)}
					switch {
					case tc.udp:
						h.gsoType = vnetGSOUDPL4
					case tc.v6:
						h.gsoType = vnetGSOTCPv6
					default:
						h.gsoType = vnetGSOTCPv4 | vnetGSOECNBit
					}
					g, ok := parseGSO(pkt, h)
					if !ok {
						t.Fatalf("size %d mss %d: parseGSO refused the packet", size, mss)
					}
					want := refSegments(pkt, g.ipLen, g.hdrLen, tc.udp, mss)
					if g.n != len(want) {
						t.Fatalf("size %d mss %d: %d segments, want %d", size, mss, g.n, len(want))
					}
					hdr := make([]byte, segHdrMax)
					for i := range g.n {
						chunk := g.header(hdr, i)
						got := append(append([]byte(nil), hdr[:g.hdrLen]...), chunk...)
						if !bytes.Equal(got, want[i]) {
							t.Fatalf("size %d mss %d segment %d of %d:\n got %x\nwant %x", size, mss, i, g.n, got[:g.hdrLen], want[i][:g.hdrLen])
						}
						if g.segLen(i) != len(got) {
							t.Fatalf("segLen(%d) = %d, want %d", i, g.segLen(i), len(got))
						}
						if !tc.udp && mss <= 1410 {
							// The in pump's copying segmenter agrees too.
							s, _ := parseTCPSuper(pkt)
							ref := make([]byte, s.hdrLen+mss)
							l := segmentTCP(ref, pkt, s, mss, i, g.n)
							if !bytes.Equal(ref[:l], got) {
								t.Fatalf("size %d mss %d segment %d differs from segmentTCP", size, mss, i)
							}
						}
					}
				}
			}
		})
	}
}

func TestParseGSORejects(t *testing.T) {
	tcp4 := superPacket(false, false, false, 0x10, make([]byte, 3000))
	tcp6 := superPacket(true, false, false, 0x10, make([]byte, 3000))
	frag := append([]byte(nil), tcp4...)
	binary.BigEndian.PutUint16(frag[6:], 0x2000) // more fragments
	for _, tc := range []struct {
		name string
		pkt  []byte
		h    vnetHdr
	}{
		{"zero gso size", tcp4, vnetHdr{gsoType: vnetGSOTCPv4}},
		{"tcp4 type on IPv6", tcp6, vnetHdr{gsoType: vnetGSOTCPv4, gsoSize: 1000}},
		{"tcp6 type on IPv4", tcp4, vnetHdr{gsoType: vnetGSOTCPv6, gsoSize: 1000}},
		{"udp type on TCP", tcp4, vnetHdr{gsoType: vnetGSOUDPL4, gsoSize: 1000}},
		{"unknown type", tcp4, vnetHdr{gsoType: 3, gsoSize: 1000}},
		{"fragment", frag, vnetHdr{gsoType: vnetGSOTCPv4, gsoSize: 1000}},
		{"headers only", tcp4[:52], vnetHdr{gsoType: vnetGSOTCPv4, gsoSize: 1000}},
		{"truncated TCP header", tcp4[:30], vnetHdr{gsoType: vnetGSOTCPv4, gsoSize: 1000}},
		{"too many segments", superPacket(false, false, false, 0x10, make([]byte, 60000)), vnetHdr{gsoType: vnetGSOTCPv4, gsoSize: 8}},
	} {
		if _, ok := parseGSO(tc.pkt, tc.h); ok {
			t.Errorf("%s: parseGSO accepted it", tc.name)
		}
	}
}

func TestCompleteChecksum(t *testing.T) {
	// A UDP packet whose checksum field holds the pseudo-header sum, as
	// the kernel leaves it with NEEDS_CSUM.
	pkt := superPacket(false, true, false, 0, []byte("hello, partial checksum"))
	udp := pkt[20:]
	pseudo := append(append([]byte(nil), pkt[12:20]...), 0, protoUDP, 0, byte(len(udp)))
	udp[6], udp[7] = 0, 0
	binary.BigEndian.PutUint16(udp[6:], slowChecksum(pseudo))
	want := append([]byte(nil), pkt...)
	binary.BigEndian.PutUint16(want[26:], 0)
	binary.BigEndian.PutUint16(want[26:], ^slowChecksum(append(pseudo, want[20:]...)))
	if !completeChecksum(pkt, 20, 6) {
		t.Fatal("completeChecksum refused valid offsets")
	}
	if !bytes.Equal(pkt, want) {
		t.Fatalf("got %x\nwant %x", pkt[20:28], want[20:28])
	}
	for _, bad := range [][2]int{{len(pkt), 0}, {len(pkt) - 1, 6}, {20, len(pkt)}} {
		if completeChecksum(pkt, bad[0], bad[1]) {
			t.Errorf("completeChecksum accepted start %d offset %d", bad[0], bad[1])
		}
	}
}

func TestVnetHdrRoundTrip(t *testing.T) {
	h := vnetHdr{flags: 1, gsoType: vnetGSOTCPv6, hdrLen: 72, gsoSize: 1378, csumStart: 40, csumOffset: 16}
	b := make([]byte, vnetHdrLen)
	h.put(b)
	if got := parseVnetHdr(b); got != h {
		t.Fatalf("round trip: got %+v, want %+v", got, h)
	}
}
