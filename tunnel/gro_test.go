package tunnel

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// coalesce runs segs through a groRun the way the in pump does and returns
// the written packets, each as the bytes of its writev (virtio-net header
// and packet).
func coalesce(t *testing.T, segs [][]byte) [][]byte {
	t.Helper()
	var out [][]byte
	var r groRun
	hdr := make([]byte, vnetHdrLen+segHdrMax)
	write := func() {
		if r.n == 0 {
			return
		}
		r.header(hdr)
		var b []byte
		for _, p := range r.pieces {
			b = append(b, p...)
		}
		out = append(out, b)
		r.reset()
	}
	for _, s := range segs {
		g := parseGRO(s, false)
		if g.ok && r.add(s, g) {
			continue
		}
		write()
		if g.ok {
			r.start(s, g)
			continue
		}
		out = append(out, append(make([]byte, vnetHdrLen), s...))
	}
	write()
	return out
}

// resplit segments a written packet back with the out pump's segmenter.
func resplit(t *testing.T, w []byte) [][]byte {
	t.Helper()
	h := parseVnetHdr(w)
	pkt := w[vnetHdrLen:]
	if h.gsoType == vnetGSONone {
		if h != (vnetHdr{}) {
			t.Fatalf("single packet with header %+v", h)
		}
		return [][]byte{pkt}
	}
	if h.flags != vnetFlagNeedsCsum {
		t.Fatalf("super-packet without NEEDS_CSUM: %+v", h)
	}
	g, ok := parseGSO(pkt, h)
	if !ok {
		t.Fatalf("parseGSO refused a coalesced packet, header %+v", h)
	}
	if int(h.hdrLen) != g.hdrLen || int(h.csumStart) != g.ipLen {
		t.Fatalf("header %+v for headers of %d bytes (IP %d)", h, g.hdrLen, g.ipLen)
	}
	// The checksum field holds the pseudo-header sum: completed as the
	// kernel would, the super-packet's checksum verifies.
	full := append([]byte(nil), pkt...)
	if !completeChecksum(full, int(h.csumStart), int(h.csumOffset)) {
		t.Fatal("checksum offsets out of range")
	}
	var pseudo uint64
	if full[0]>>4 == 4 {
		pseudo = checksumAdd(0, full[12:20])
		if checksum(full[:20], 0) != 0xffff {
			t.Fatal("bad IPv4 header checksum on the coalesced packet")
		}
		if int(binary.BigEndian.Uint16(full[2:4])) != len(full) {
			t.Fatal("IPv4 total length not rewritten")
		}
	} else {
		pseudo = checksumAdd(0, full[8:40])
	}
	l4 := full[g.ipLen:]
	if fold(checksumFast(pseudo+uint64(g.proto)+uint64(len(l4)), l4)) != 0xffff {
		t.Fatal("completed checksum of the coalesced packet does not verify")
	}
	var out [][]byte
	hb := make([]byte, segHdrMax)
	for i := range g.n {
		chunk := g.header(hb, i)
		out = append(out, append(append([]byte(nil), hb[:g.hdrLen]...), chunk...))
	}
	return out
}

func TestGROCoalescesAndResplits(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name    string
		v6, udp bool
		size    int
		mss     int
		flags   byte
		writes  int // packets written
	}{
		{"tcp4 full", false, false, 64000, 1398, tcpACK | tcpPSH, 1},
		{"tcp4 fin cwr", false, false, 10000, 1398, tcpACK | tcpPSH | tcpFIN | tcpCWR, 1},
		{"tcp6", true, false, 30000, 1378, tcpACK, 1},
		{"tcp4 one segment", false, false, 1000, 1398, tcpACK, 1},
		{"udp4", false, true, 64 * 40, 64, 0, 1},
		{"udp6 short last", true, true, 1000*5 + 17, 1000, 0, 1},
		{"udp4 beyond 64 segments", false, true, 100 * 70, 100, 0, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := make([]byte, tc.size)
			for i := range payload {
				payload[i] = byte(r.Uint32())
			}
			sp := superPacket(tc.v6, tc.udp, false, tc.flags, payload)
			ipLen := 20
			if tc.v6 {
				ipLen = 40
			}
			hdrLen := ipLen + 32
			if tc.udp {
				hdrLen = ipLen + 8
			}
			segs := refSegments(sp, ipLen, hdrLen, tc.udp, tc.mss)
			orig := make([][]byte, len(segs))
			for i, s := range segs {
				orig[i] = append([]byte(nil), s...)
			}
			written := coalesce(t, segs)
			if len(written) != tc.writes {
				t.Fatalf("%d segments written as %d packets, want %d", len(segs), len(written), tc.writes)
			}
			for i := range segs {
				if !bytes.Equal(segs[i], orig[i]) {
					t.Fatalf("coalescing modified received segment %d", i)
				}
			}
			var back [][]byte
			for _, w := range written {
				back = append(back, resplit(t, w)...)
			}
			if len(back) != len(orig) {
				t.Fatalf("re-split into %d segments, want %d", len(back), len(orig))
			}
			for i := range orig {
				if !bytes.Equal(back[i], orig[i]) {
					t.Fatalf("segment %d differs after coalescing and re-splitting:\n got %x\nwant %x", i, back[i][:hdrLen], orig[i][:hdrLen])
				}
			}
		})
	}
}

func TestGROKeepsApart(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	payload := make([]byte, 1398*4)
	for i := range payload {
		payload[i] = byte(r.Uint32())
	}
	base := func() [][]byte {
		sp := superPacket(false, false, false, tcpACK, payload)
		return refSegments(sp, 20, 52, false, 1398)
	}
	// recsum recomputes a segment's checksums after a test edits it.
	recsum := func(s []byte) {
		s[10], s[11] = 0, 0
		binary.BigEndian.PutUint16(s[10:], ^slowChecksum(s[:20]))
		l4 := s[20:]
		l4[16], l4[17] = 0, 0
		ph := append(append([]byte(nil), s[12:20]...), 0, protoTCP, byte(len(l4)>>8), byte(len(l4)))
		binary.BigEndian.PutUint16(l4[16:], ^slowChecksum(append(ph, l4...)))
	}
	for _, tc := range []struct {
		name   string
		edit   func(segs [][]byte)
		writes int
	}{
		{"unchanged", func([][]byte) {}, 1},
		{"corrupt payload", func(s [][]byte) { s[2][100] ^= 1 }, 3}, // 0-1, 2 alone, 3
		{"corrupt IP header", func(s [][]byte) { s[1][8]-- }, 3},
		{"sequence gap", func(s [][]byte) { binary.BigEndian.PutUint32(s[2][24:], 5); recsum(s[2]) }, 3},
		{"other ack", func(s [][]byte) { s[1][29]++; recsum(s[1]) }, 3},
		{"other window", func(s [][]byte) { s[3][35]++; recsum(s[3]) }, 2},
		{"other timestamp", func(s [][]byte) { s[2][51]++; recsum(s[2]) }, 3},
		{"CWR after the first", func(s [][]byte) { s[1][33] |= tcpCWR; recsum(s[1]) }, 2},
		{"PSH ends a run", func(s [][]byte) { s[1][33] |= tcpPSH; recsum(s[1]) }, 2},
		{"other TTL", func(s [][]byte) { s[3][8]--; recsum(s[3]) }, 2},
		{"other TOS", func(s [][]byte) { s[3][1] = 0; recsum(s[3]) }, 2},
		{"no DF", func(s [][]byte) { s[0][6] = 0; recsum(s[0]) }, 2},
		{"other port", func(s [][]byte) { s[2][21]++; recsum(s[2]) }, 3},
		{"SYN", func(s [][]byte) { s[0][33] |= tcpSYN; recsum(s[0]) }, 2},
	} {
		segs := base()
		tc.edit(segs)
		written := coalesce(t, segs)
		if len(written) != tc.writes {
			t.Errorf("%s: written as %d packets, want %d", tc.name, len(written), tc.writes)
			continue
		}
		// Whatever was kept apart is written byte for byte as received.
		var back [][]byte
		for _, w := range written {
			back = append(back, resplit(t, w)...)
		}
		if len(back) != len(segs) {
			t.Errorf("%s: %d segments back, want %d", tc.name, len(back), len(segs))
		}
	}
}
