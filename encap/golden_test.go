package encap

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The golden frames: two VXLAN frames captured between two nodes running
// flannel's kernel vxlan backend, kept in testdata/ as the capture tool
// wrote them (testdata/README.md says how and where): the pcap is what the
// tests decode and compare against; the tcpdump -XX text beside it is the
// readable copy, and TestGoldenCaptureAgrees keeps the two identical.

const (
	captureTxt  = "flannel-vxlan-icmp.txt"
	capturePcap = "flannel-vxlan-icmp.pcap"
)

var (
	macNodeA = MAC{0x3a, 0x2e, 0x6c, 0x5d, 0xb4, 0xd6} // VtepMAC of 172.30.250.11
	macNodeB = MAC{0xa6, 0xc3, 0x4f, 0x6d, 0x8b, 0xb2} // VtepMAC of 172.30.250.12
)

// goldenFrame describes one captured frame and what it must decode to.
type goldenFrame struct {
	name            string // for test names and messages
	src, dst        MAC    // inner Ethernet source and destination (VtepMACs)
	outerSrc        netip.Addr
	outerDst        netip.Addr
	innerSrc        netip.Addr
	innerDst        netip.Addr
	icmpType        byte
	icmpID, icmpSeq uint16
	innerLen        int
	outerSrcPort    uint16
	outerDstPort    uint16
}

var goldenFrames = []goldenFrame{
	{
		name: "echo-request",
		src:  macNodeA, dst: macNodeB,
		outerSrc: netip.MustParseAddr("172.30.250.11"), outerDst: netip.MustParseAddr("172.30.250.12"),
		innerSrc: netip.MustParseAddr("10.244.30.2"), innerDst: netip.MustParseAddr("10.244.83.2"),
		icmpType: 8, icmpID: 27280, icmpSeq: 1, innerLen: 84,
		outerSrcPort: 33909, outerDstPort: PortLinux,
	},
	{
		name: "echo-reply",
		src:  macNodeB, dst: macNodeA,
		outerSrc: netip.MustParseAddr("172.30.250.12"), outerDst: netip.MustParseAddr("172.30.250.11"),
		innerSrc: netip.MustParseAddr("10.244.83.2"), innerDst: netip.MustParseAddr("10.244.30.2"),
		icmpType: 0, icmpID: 27280, icmpSeq: 1, innerLen: 84,
		outerSrcPort: 33909, outerDstPort: PortLinux,
	},
}

// goldenEthernet returns the whole outer Ethernet frame of golden frame i,
// as captured in the pcap.
func goldenEthernet(tb testing.TB, i int) []byte {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", capturePcap))
	if err != nil {
		tb.Fatalf("read the captured frames: %v", err)
	}
	frames := parsePcap(tb, data)
	if len(frames) != len(goldenFrames) {
		tb.Fatalf("%s holds %d frames, want %d", capturePcap, len(frames), len(goldenFrames))
	}
	return frames[i]
}

// outerUDPPayload checks the outer Ethernet, IPv4 and UDP headers of a
// captured frame and returns the UDP payload: the VXLAN frame.
func outerUDPPayload(tb testing.TB, g goldenFrame, eth []byte) []byte {
	tb.Helper()
	if len(eth) < 14+20+8 {
		tb.Fatalf("%s: %d bytes is too short for Ethernet+IPv4+UDP", g.name, len(eth))
	}
	if et := binary.BigEndian.Uint16(eth[12:14]); et != EtherTypeIPv4 {
		tb.Fatalf("%s: outer EtherType %#04x, want IPv4", g.name, et)
	}
	ip := eth[14:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if ip[0]>>4 != 4 || ihl != IPv4HeaderLen || ip[9] != 17 || total != len(ip) {
		tb.Fatalf("%s: unexpected outer IPv4 header % x", g.name, ip[:20])
	}
	if s, d := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20])); s != g.outerSrc || d != g.outerDst {
		tb.Fatalf("%s: outer %v > %v, want %v > %v", g.name, s, d, g.outerSrc, g.outerDst)
	}
	udp := ip[ihl:]
	sport, dport := binary.BigEndian.Uint16(udp[0:2]), binary.BigEndian.Uint16(udp[2:4])
	if sport != g.outerSrcPort || dport != g.outerDstPort {
		tb.Fatalf("%s: UDP ports %d > %d, want %d > %d", g.name, sport, dport, g.outerSrcPort, g.outerDstPort)
	}
	if ulen := int(binary.BigEndian.Uint16(udp[4:6])); ulen != len(udp) {
		tb.Fatalf("%s: UDP length %d, datagram has %d bytes", g.name, ulen, len(udp))
	}
	return udp[UDPHeaderLen:]
}

// goldenPayload returns the VXLAN frame (UDP payload) of golden frame i.
func goldenPayload(tb testing.TB, i int) []byte {
	tb.Helper()
	g := goldenFrames[i]
	return outerUDPPayload(tb, g, goldenEthernet(tb, i))
}

// parseTcpdumpXX extracts the frames from `tcpdump -XX` output: runs of
// "\t0xOFFS:  hhhh hhhh ...  ascii" lines, each run starting at offset 0.
func parseTcpdumpXX(tb testing.TB, text string) [][]byte {
	tb.Helper()
	var frames [][]byte
	for n, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, "\t0x")
		if !ok {
			continue
		}
		offHex, dump, ok := strings.Cut(rest, ":  ")
		if !ok {
			tb.Fatalf("line %d: no offset separator: %q", n+1, line)
		}
		off, err := strconv.ParseUint(offHex, 16, 32)
		if err != nil {
			tb.Fatalf("line %d: offset: %v", n+1, err)
		}
		hexPart, _, _ := strings.Cut(dump, "  ") // the ASCII column follows two spaces
		b, err := hex.DecodeString(strings.ReplaceAll(hexPart, " ", ""))
		if err != nil {
			tb.Fatalf("line %d: %v", n+1, err)
		}
		if off == 0 {
			frames = append(frames, nil)
		}
		if len(frames) == 0 || int(off) != len(frames[len(frames)-1]) {
			tb.Fatalf("line %d: offset %#x does not continue a frame", n+1, off)
		}
		frames[len(frames)-1] = append(frames[len(frames)-1], b...)
	}
	return frames
}

// parsePcap extracts the packets of a classic libpcap file with Ethernet
// link type, in either byte order, micro- or nanosecond timestamps.
func parsePcap(tb testing.TB, data []byte) [][]byte {
	tb.Helper()
	if len(data) < 24 {
		tb.Fatalf("pcap: %d bytes is too short for the file header", len(data))
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(data[0:4]) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		tb.Fatalf("pcap: bad magic % x", data[0:4])
	}
	if lt := bo.Uint32(data[20:24]); lt != 1 {
		tb.Fatalf("pcap: link type %d, want 1 (Ethernet)", lt)
	}
	var pkts [][]byte
	for rest := data[24:]; len(rest) > 0; {
		if len(rest) < 16 {
			tb.Fatalf("pcap: truncated record header")
		}
		incl, orig := int(bo.Uint32(rest[8:12])), int(bo.Uint32(rest[12:16]))
		if incl != orig || len(rest) < 16+incl {
			tb.Fatalf("pcap: record of %d/%d bytes, %d left", incl, orig, len(rest)-16)
		}
		pkts = append(pkts, rest[16:16+incl])
		rest = rest[16+incl:]
	}
	return pkts
}

// TestGoldenCaptureAgrees checks that the tcpdump text in testdata/ shows
// exactly the frames of the pcap, byte for byte, so the readable copy
// cannot drift from the one the tests use.
func TestGoldenCaptureAgrees(t *testing.T) {
	text, err := os.ReadFile(filepath.Join("testdata", captureTxt))
	if err != nil {
		t.Fatal(err)
	}
	fromText := parseTcpdumpXX(t, string(text))
	if len(fromText) != len(goldenFrames) {
		t.Fatalf("%s holds %d frames, want %d", captureTxt, len(fromText), len(goldenFrames))
	}
	for i, g := range goldenFrames {
		if want := goldenEthernet(t, i); !bytes.Equal(fromText[i], want) {
			t.Errorf("%s: frame %d of %s differs from %s:\n got %x\nwant %x", g.name, i+1, captureTxt, capturePcap, fromText[i], want)
		}
	}
}

// checkAliases fails unless pkt is a non-empty subslice of frame's first
// len(frame) bytes: the same backing array, within bounds.
func checkAliases(tb testing.TB, pkt, frame []byte) {
	tb.Helper()
	if len(pkt) == 0 {
		tb.Fatalf("Decap returned an empty packet without error")
	}
	off := cap(frame) - cap(pkt) // a subslice frame[off:] has cap(frame)-off
	if off < 0 || off+len(pkt) > len(frame) || &frame[off] != &pkt[0] {
		tb.Fatalf("Decap returned a slice (len %d cap %d) outside the frame (len %d cap %d)", len(pkt), cap(pkt), len(frame), cap(frame))
	}
}

func TestGoldenDecap(t *testing.T) {
	for i, g := range goldenFrames {
		t.Run(g.name, func(t *testing.T) {
			frame := goldenPayload(t, i)
			pkt, err := Decap(frame, 1, g.dst)
			if err != nil {
				t.Fatalf("Decap: %v", err)
			}
			checkAliases(t, pkt, frame)
			if want := slowDecap(frame, 1, g.dst); want.err != nil || &frame[want.start] != &pkt[0] || want.end-want.start != len(pkt) {
				t.Fatalf("Decap disagrees with the reference: %+v", want)
			}
			if len(pkt) != g.innerLen || len(frame) != Headroom+g.innerLen {
				t.Fatalf("inner packet is %d bytes of a %d-byte frame, want %d of %d", len(pkt), len(frame), g.innerLen, Headroom+g.innerLen)
			}
			icmp := checkIPv4(t, pkt, g.innerSrc, g.innerDst, 1)
			if icmp[0] != g.icmpType || icmp[1] != 0 {
				t.Errorf("ICMP type/code %d/%d, want %d/0", icmp[0], icmp[1], g.icmpType)
			}
			if id, seq := binary.BigEndian.Uint16(icmp[4:6]), binary.BigEndian.Uint16(icmp[6:8]); id != g.icmpID || seq != g.icmpSeq {
				t.Errorf("ICMP id/seq %d/%d, want %d/%d", id, seq, g.icmpID, g.icmpSeq)
			}
			if c := checksum(icmp); c != 0 {
				t.Errorf("ICMP checksum does not verify (folds to %#04x)", c)
			}
			// The ping pattern: bytes 0x10..0x37 end the echo data.
			for j, b := range icmp[len(icmp)-0x28:] {
				if b != byte(0x10+j) {
					t.Fatalf("echo data byte %d is %#02x, want %#02x", j, b, 0x10+j)
				}
			}

			// The frame is not ours on the other node.
			if _, err := Decap(frame, 1, g.src); err != ErrNotOurMAC {
				t.Errorf("Decap with the sender's MAC: %v, want ErrNotOurMAC", err)
			}
		})
	}
}

func TestGoldenParseHeader(t *testing.T) {
	for i, g := range goldenFrames {
		h, err := ParseHeader(goldenPayload(t, i))
		if err != nil {
			t.Fatal(err)
		}
		want := Header{Flags: 0x08, VNI: 1, Dst: g.dst, Src: g.src, EtherType: EtherTypeIPv4}
		if h != want {
			t.Errorf("%s: ParseHeader = %+v, want %+v", g.name, h, want)
		}
	}
}

// TestGoldenReencap re-encapsulates each captured inner packet with the same
// VNI and MACs and requires the captured VXLAN frame byte for byte.
func TestGoldenReencap(t *testing.T) {
	for i, g := range goldenFrames {
		t.Run(g.name, func(t *testing.T) {
			frame := goldenPayload(t, i)
			inner := frame[Headroom:]
			buf := make([]byte, Headroom+len(inner))
			for j := range buf[:Headroom] {
				buf[j] = 0xa5 // stale bytes that Encap must overwrite
			}
			copy(buf[Headroom:], inner)
			if err := Encap(buf, 1, g.dst, g.src); err != nil {
				t.Fatalf("Encap: %v", err)
			}
			if !bytes.Equal(buf, frame) {
				t.Fatalf("re-encapsulated frame differs from the capture:\n got %x\nwant %x", buf, frame)
			}
			ref, err := slowEncap(inner, 1, g.dst, g.src)
			if err != nil || !bytes.Equal(ref, frame) {
				t.Fatalf("reference encoder disagrees with the capture (%v):\n got %x\nwant %x", err, ref, frame)
			}
		})
	}
}

// TestGoldenOverhead checks the derived sizes against the captured frames:
// outer IPv4 total length minus the inner packet is exactly OverheadIPv4.
func TestGoldenOverhead(t *testing.T) {
	for i, g := range goldenFrames {
		eth := goldenEthernet(t, i)
		outerTotal := int(binary.BigEndian.Uint16(eth[14+2:]))
		if got := outerTotal - g.innerLen; got != OverheadIPv4 {
			t.Errorf("%s: outer IPv4 length %d - inner %d = %d, want OverheadIPv4 = %d", g.name, outerTotal, g.innerLen, got, OverheadIPv4)
		}
	}
}

// checkIPv4 verifies an IPv4 header without options (version, length,
// checksum, addresses, protocol) and returns the payload.
func checkIPv4(tb testing.TB, pkt []byte, src, dst netip.Addr, proto byte) []byte {
	tb.Helper()
	if len(pkt) < IPv4HeaderLen || pkt[0] != 0x45 {
		tb.Fatalf("not an IPv4 packet without options: % x", pkt[:min(len(pkt), 20)])
	}
	if total := int(binary.BigEndian.Uint16(pkt[2:4])); total != len(pkt) {
		tb.Fatalf("IPv4 total length %d, packet has %d bytes", total, len(pkt))
	}
	if c := checksum(pkt[:IPv4HeaderLen]); c != 0 {
		tb.Errorf("IPv4 header checksum does not verify (folds to %#04x)", c)
	}
	if s, d := netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20])); s != src || d != dst {
		tb.Errorf("inner %v > %v, want %v > %v", s, d, src, dst)
	}
	if pkt[9] != proto {
		tb.Errorf("inner protocol %d, want %d", pkt[9], proto)
	}
	return pkt[IPv4HeaderLen:]
}

// checksum is the Internet checksum (RFC 1071) of b: 0 when b includes a
// correct checksum field.
func checksum(b []byte) uint16 {
	var sum uint32
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// buildIPv4 builds an IPv4 packet without options and with a correct
// header checksum.
func buildIPv4(src, dst netip.Addr, proto byte, payload []byte) []byte {
	p := make([]byte, IPv4HeaderLen, IPv4HeaderLen+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(IPv4HeaderLen+len(payload)))
	p[8] = 64
	p[9] = proto
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[10:12], checksum(p))
	return append(p, payload...)
}

// buildIPv6 builds an IPv6 packet with the given flow label and next header.
func buildIPv6(src, dst netip.Addr, flowLabel uint32, nextHeader byte, payload []byte) []byte {
	p := make([]byte, IPv6HeaderLen, IPv6HeaderLen+len(payload))
	binary.BigEndian.PutUint32(p[0:4], 6<<28|flowLabel&0xfffff)
	binary.BigEndian.PutUint16(p[4:6], uint16(len(payload)))
	p[6] = nextHeader
	p[7] = 64
	s, d := src.As16(), dst.As16()
	copy(p[8:24], s[:])
	copy(p[24:40], d[:])
	return append(p, payload...)
}

// frameFor encapsulates pkt with the reference encoder.
func frameFor(tb testing.TB, pkt []byte, vni VNI, dst, src MAC) []byte {
	tb.Helper()
	f, err := slowEncap(pkt, vni, dst, src)
	if err != nil {
		tb.Fatalf("slowEncap: %v", err)
	}
	return f
}
