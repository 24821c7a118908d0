package encap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestSizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"HeaderLen", HeaderLen, 8},
		{"EthernetLen", EthernetLen, 14},
		{"Headroom", Headroom, 22},
		{"OverheadIPv4", OverheadIPv4, 50},
		{"OverheadIPv6", OverheadIPv6, 70},
		{"overlay MTU on a 1500 underlay", 1500 - OverheadIPv4, 1450},
		{"PortLinux", PortLinux, 8472},
		{"PortIANA", PortIANA, 4789},
		{"MaxVNI", MaxVNI, 16777215},
		{"SourcePortMin", SourcePortMin, 32768},
		{"SourcePortMax", SourcePortMax, 60999},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

func TestNewVNI(t *testing.T) {
	for _, v := range []uint32{0, 1, 4096, MaxVNI} {
		got, err := NewVNI(v)
		if err != nil || uint32(got) != v || !got.Valid() {
			t.Errorf("NewVNI(%d) = %d, %v; want %d, nil", v, got, err, v)
		}
	}
	for _, v := range []uint32{MaxVNI + 1, 1 << 24 << 7, ^uint32(0)} {
		got, err := NewVNI(v)
		if !errors.Is(err, ErrVNIRange) || got != 0 {
			t.Errorf("NewVNI(%d) = %d, %v; want 0, ErrVNIRange", v, got, err)
		}
		if err != nil && !strings.Contains(err.Error(), "16777216") && v == MaxVNI+1 {
			t.Errorf("NewVNI(%d) error %q does not name the bad value", v, err)
		}
		if VNI(v).Valid() {
			t.Errorf("VNI(%d).Valid() = true", v)
		}
	}
}

func TestMAC(t *testing.T) {
	m, err := ParseMAC("3a:2e:6c:5d:b4:d6")
	if err != nil || m != macNodeA {
		t.Fatalf("ParseMAC = %v, %v; want %v", m, err, macNodeA)
	}
	if s := m.String(); s != "3a:2e:6c:5d:b4:d6" {
		t.Errorf("String = %q", s)
	}
	if m2, err := ParseMAC("A6-C3-4F-6D-8B-B2"); err != nil || m2 != macNodeB {
		t.Errorf("ParseMAC(upper, dashes) = %v, %v; want %v", m2, err, macNodeB)
	}
	hw := m.HardwareAddr()
	hw[0] = 0xff
	if m != macNodeA {
		t.Error("HardwareAddr shares memory with the MAC")
	}
	for _, bad := range []string{"", "zz:2e:6c:5d:b4:d6", "3a:2e:6c:5d:b4", "02:00:5e:10:00:00:00:01"} {
		if _, err := ParseMAC(bad); err == nil {
			t.Errorf("ParseMAC(%q) succeeded", bad)
		}
	}
	if _, err := MACFrom(net.HardwareAddr{1, 2, 3}); err == nil {
		t.Error("MACFrom(3 bytes) succeeded")
	}
	if got, err := MACFrom(net.HardwareAddr(macNodeB[:])); err != nil || got != macNodeB {
		t.Errorf("MACFrom = %v, %v", got, err)
	}
}

// Packets the table tests are built from.
var (
	pod1, pod2     = netip.MustParseAddr("10.244.30.2"), netip.MustParseAddr("10.244.83.2")
	pod1v6, pod2v6 = netip.MustParseAddr("fc00:0:0:1e::2"), netip.MustParseAddr("fc00:0:0:53::2")
)

func icmp4Packet() []byte {
	return buildIPv4(pod1, pod2, 1, []byte{8, 0, 0xf7, 0xff, 0, 0, 0, 0})
}

func icmp6Packet() []byte {
	return buildIPv6(pod1v6, pod2v6, 0x12345, 58, []byte{128, 0, 0, 0, 0, 1, 0, 1})
}

// arpRequest is the ARP request a kernel VTEP without a neighbour entry
// would send: who-has 10.244.83.0 tell 10.244.30.0.
func arpRequest(sender MAC) []byte {
	a := []byte{0, 1, 8, 0, 6, 4, 0, 1}
	a = append(a, sender[:]...)
	a = append(a, 10, 244, 30, 0)
	a = append(a, 0, 0, 0, 0, 0, 0)
	return append(a, 10, 244, 83, 0)
}

// decapCase is one frame Decap must accept or reject; the cases also seed
// FuzzDecap.
type decapCase struct {
	name  string
	frame []byte
	vni   VNI
	local MAC
	err   error
	inner []byte // the packet Decap must return, when err is nil
}

// withByte returns a copy of frame with frame[i] = v.
func withByte(frame []byte, i int, v byte) []byte {
	f := bytes.Clone(frame)
	f[i] = v
	return f
}

func decapCases(tb testing.TB) []decapCase {
	tb.Helper()
	v4, v6 := icmp4Packet(), icmp6Packet()
	f4 := frameFor(tb, v4, 1, macNodeB, macNodeA)
	f6 := frameFor(tb, v6, 1, macNodeB, macNodeA)
	broadcast := MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	etherType := func(f []byte, et uint16) []byte {
		f = bytes.Clone(f)
		binary.BigEndian.PutUint16(f[offEtherType:], et)
		return f
	}
	// v4 with its header fields edited (checksum left stale: Decap does not
	// check it, the receiving kernel does).
	v4With := func(edit func(p []byte)) []byte {
		p := bytes.Clone(v4)
		edit(p)
		return append(frameHeader(1, macNodeB, macNodeA, EtherTypeIPv4), p...)
	}
	padded4 := append(bytes.Clone(f4), make([]byte, 60-EthernetLen-len(v4))...) // padded to the Ethernet minimum
	padded6 := append(bytes.Clone(f6), 0xee, 0xee, 0xee)
	reserved := bytes.Clone(f4)
	reserved[0] = 0xff // every reserved flag bit set, I set
	reserved[1], reserved[2], reserved[3], reserved[7] = 0xff, 0xff, 0xff, 0xff
	vni := frameFor(tb, v4, MaxVNI, macNodeB, macNodeA)

	return []decapCase{
		{name: "ipv4", frame: f4, vni: 1, local: macNodeB, inner: v4},
		{name: "ipv6", frame: f6, vni: 1, local: macNodeB, inner: v6},
		{name: "ipv4 ethernet padding trimmed", frame: padded4, vni: 1, local: macNodeB, inner: v4},
		{name: "ipv6 trailing bytes trimmed", frame: padded6, vni: 1, local: macNodeB, inner: v6},
		{name: "reserved bits ignored", frame: reserved, vni: 1, local: macNodeB, inner: v4},
		{name: "max VNI", frame: vni, vni: MaxVNI, local: macNodeB, inner: v4},
		{name: "ipv4 header only", frame: frameFor(tb, buildIPv4(pod1, pod2, 253, nil), 1, macNodeB, macNodeA), vni: 1, local: macNodeB, inner: buildIPv4(pod1, pod2, 253, nil)},

		{name: "empty", frame: nil, vni: 1, local: macNodeB, err: ErrShortBuffer},
		{name: "vxlan header only", frame: f4[:HeaderLen], vni: 1, local: macNodeB, err: ErrShortBuffer},
		{name: "one byte short of ethernet", frame: f4[:Headroom-1], vni: 1, local: macNodeB, err: ErrShortBuffer},

		{name: "no flags", frame: withByte(f4, 0, 0x00), vni: 1, local: macNodeB, err: ErrNoIFlag},
		{name: "reserved flags without I", frame: withByte(f4, 0, 0xf7), vni: 1, local: macNodeB, err: ErrNoIFlag},

		{name: "frame VNI 2", frame: withByte(f4, offVNI+2, 2), vni: 1, local: macNodeB, err: ErrWrongVNI},
		{name: "frame VNI high byte", frame: withByte(f4, offVNI, 1), vni: 1, local: macNodeB, err: ErrWrongVNI},
		{name: "configured VNI 2", frame: f4, vni: 2, local: macNodeB, err: ErrWrongVNI},
		{name: "configured VNI out of range does not alias", frame: f4, vni: 1<<24 | 1, local: macNodeB, err: ErrWrongVNI},
		{name: "VNI in reserved byte is not the VNI", frame: withByte(withByte(f4, offVNI+2, 0), 7, 1), vni: 1, local: macNodeB, err: ErrWrongVNI},

		{name: "arp broadcast request", frame: append(frameHeader(1, broadcast, macNodeA, EtherTypeARP), arpRequest(macNodeA)...), vni: 1, local: macNodeB, err: ErrARP},
		{name: "arp unicast to us", frame: append(frameHeader(1, macNodeB, macNodeA, EtherTypeARP), arpRequest(macNodeA)...), vni: 1, local: macNodeB, err: ErrARP},
		{name: "arp without body", frame: frameHeader(1, broadcast, macNodeA, EtherTypeARP), vni: 1, local: macNodeB, err: ErrARP},

		{name: "not our MAC", frame: f4, vni: 1, local: macNodeA, err: ErrNotOurMAC},
		{name: "broadcast ipv4", frame: frameFor(tb, v4, 1, broadcast, macNodeA), vni: 1, local: macNodeB, err: ErrNotOurMAC},
		{name: "last MAC byte differs", frame: withByte(f4, offEthSrc-1, macNodeB[5]^1), vni: 1, local: macNodeB, err: ErrNotOurMAC},

		{name: "ethertype VLAN", frame: etherType(f4, 0x8100), vni: 1, local: macNodeB, err: ErrEtherType},
		{name: "ethertype zero", frame: etherType(f4, 0), vni: 1, local: macNodeB, err: ErrEtherType},
		{name: "ethertype swapped bytes", frame: etherType(f4, 0x0008), vni: 1, local: macNodeB, err: ErrEtherType},
		{name: "ethertype on header-only frame", frame: frameHeader(1, macNodeB, macNodeA, 0x88cc), vni: 1, local: macNodeB, err: ErrEtherType},

		{name: "ipv4 ethertype, ipv6 packet", frame: etherType(f6, EtherTypeIPv4), vni: 1, local: macNodeB, err: ErrVersionMismatch},
		{name: "ipv6 ethertype, ipv4 packet", frame: etherType(f4, EtherTypeIPv6), vni: 1, local: macNodeB, err: ErrVersionMismatch},
		{name: "ipv4 ethertype, version 5", frame: v4With(func(p []byte) { p[0] = 0x55 }), vni: 1, local: macNodeB, err: ErrVersionMismatch},
		{name: "ipv4 ethertype, version 0", frame: append(frameHeader(1, macNodeB, macNodeA, EtherTypeIPv4), 0x05), vni: 1, local: macNodeB, err: ErrVersionMismatch},

		{name: "ipv4 ethertype, no packet", frame: frameHeader(1, macNodeB, macNodeA, EtherTypeIPv4), vni: 1, local: macNodeB, err: ErrTruncatedIP},
		{name: "ipv6 ethertype, no packet", frame: frameHeader(1, macNodeB, macNodeA, EtherTypeIPv6), vni: 1, local: macNodeB, err: ErrTruncatedIP},
		{name: "ipv4 19 bytes", frame: f4[:Headroom+IPv4HeaderLen-1], vni: 1, local: macNodeB, err: ErrTruncatedIP},
		{name: "ipv4 IHL 4", frame: v4With(func(p []byte) { p[0] = 0x44 }), vni: 1, local: macNodeB, err: ErrTruncatedIP},
		{name: "ipv4 IHL beyond packet", frame: v4With(func(p []byte) { p[0] = 0x4f }), vni: 1, local: macNodeB, err: ErrTruncatedIP},
		{name: "ipv4 total length beyond packet", frame: v4With(func(p []byte) { p[3]++ }), vni: 1, local: macNodeB, err: ErrTruncatedIP},
		{name: "ipv4 total length below IHL", frame: v4With(func(p []byte) { p[2], p[3] = 0, 19 }), vni: 1, local: macNodeB, err: ErrTruncatedIP},
		{name: "ipv4 total length zero", frame: v4With(func(p []byte) { p[2], p[3] = 0, 0 }), vni: 1, local: macNodeB, err: ErrTruncatedIP},
		{name: "ipv6 39 bytes", frame: f6[:Headroom+IPv6HeaderLen-1], vni: 1, local: macNodeB, err: ErrTruncatedIP},
		{name: "ipv6 payload beyond packet", frame: f6[:len(f6)-1], vni: 1, local: macNodeB, err: ErrTruncatedIP},
	}
}

// frameHeader returns just the 22 header bytes, built by the reference
// rules (used where the inner bytes are not an IP packet).
func frameHeader(vni VNI, dst, src MAC, etherType uint16) []byte {
	f := []byte{0x08, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}
	f = append(f, dst[:]...)
	f = append(f, src[:]...)
	return binary.BigEndian.AppendUint16(f, etherType)
}

func TestDecap(t *testing.T) {
	for _, c := range decapCases(t) {
		t.Run(c.name, func(t *testing.T) {
			orig := bytes.Clone(c.frame)
			pkt, err := Decap(c.frame, c.vni, c.local)
			if err != c.err { // sentinels are returned unwrapped: == must work
				t.Fatalf("Decap error = %v, want %v", err, c.err)
			}
			if !bytes.Equal(c.frame, orig) {
				t.Fatal("Decap modified the frame")
			}
			ref := slowDecap(c.frame, c.vni, c.local)
			if ref.err != c.err {
				t.Fatalf("reference error = %v, want %v", ref.err, c.err)
			}
			if err != nil {
				if pkt != nil {
					t.Fatalf("Decap returned %d bytes with error %v", len(pkt), err)
				}
				return
			}
			checkAliases(t, pkt, c.frame)
			if !bytes.Equal(pkt, c.inner) {
				t.Fatalf("Decap = %x, want %x", pkt, c.inner)
			}
			if &pkt[0] != &c.frame[ref.start] || len(pkt) != ref.end-ref.start {
				t.Fatalf("Decap = frame[%d:%d], reference frame[%d:%d]", cap(c.frame)-cap(pkt), cap(c.frame)-cap(pkt)+len(pkt), ref.start, ref.end)
			}
		})
	}
}

// TestDecapErrorsDistinct checks that every rejection reason has its own
// comparable error, so drops can be counted by reason.
func TestDecapErrorsDistinct(t *testing.T) {
	all := []error{ErrShortBuffer, ErrNoIFlag, ErrWrongVNI, ErrNotOurMAC, ErrARP, ErrEtherType, ErrVersionMismatch, ErrTruncatedIP, ErrVNIRange}
	seen := map[error]bool{}
	msgs := map[string]bool{}
	for _, e := range all {
		if seen[e] || msgs[e.Error()] {
			t.Errorf("error %q is not distinct", e)
		}
		seen[e], msgs[e.Error()] = true, true
		if !strings.HasPrefix(e.Error(), "encap: ") {
			t.Errorf("error %q lacks the package prefix", e)
		}
	}
	covered := map[error]bool{}
	for _, c := range decapCases(t) {
		covered[c.err] = true
	}
	for _, e := range all[:len(all)-1] {
		if !covered[e] {
			t.Errorf("no table case rejects with %v", e)
		}
	}
}

func TestEncap(t *testing.T) {
	v4, v6 := icmp4Packet(), icmp6Packet()
	for _, c := range []struct {
		name      string
		pkt       []byte
		vni       VNI
		err       error
		etherType uint16
	}{
		{name: "ipv4", pkt: v4, vni: 1, etherType: EtherTypeIPv4},
		{name: "ipv6", pkt: v6, vni: 1, etherType: EtherTypeIPv6},
		{name: "max VNI", pkt: v4, vni: MaxVNI, etherType: EtherTypeIPv4},
		{name: "VNI 0", pkt: v6, vni: 0, etherType: EtherTypeIPv6},
		{name: "one byte ipv4 nibble", pkt: []byte{0x45}, vni: 1, etherType: EtherTypeIPv4},
		{name: "no packet", pkt: nil, vni: 1, err: ErrShortBuffer},
		{name: "VNI out of range", pkt: v4, vni: MaxVNI + 1, err: ErrVNIRange},
		{name: "VNI all ones", pkt: v4, vni: ^VNI(0), err: ErrVNIRange},
		{name: "version 0", pkt: []byte{0x00, 1, 2}, vni: 1, err: ErrVersionMismatch},
		{name: "version 5", pkt: []byte{0x55, 1, 2}, vni: 1, err: ErrVersionMismatch},
		{name: "version 15", pkt: []byte{0xf4}, vni: 1, err: ErrVersionMismatch},
	} {
		t.Run(c.name, func(t *testing.T) {
			buf := make([]byte, Headroom+len(c.pkt))
			for i := range buf[:Headroom] {
				buf[i] = 0xff // reserved bits must come out zero
			}
			copy(buf[Headroom:], c.pkt)
			orig := bytes.Clone(buf)
			err := Encap(buf, c.vni, macNodeB, macNodeA)
			if err != c.err {
				t.Fatalf("Encap error = %v, want %v", err, c.err)
			}
			ref, refErr := slowEncap(c.pkt, c.vni, macNodeB, macNodeA)
			if refErr != c.err {
				t.Fatalf("reference error = %v, want %v", refErr, c.err)
			}
			if err != nil {
				if !bytes.Equal(buf, orig) {
					t.Fatal("Encap modified the buffer on error")
				}
				return
			}
			if !bytes.Equal(buf, ref) {
				t.Fatalf("Encap = %x, reference %x", buf, ref)
			}
			if !bytes.Equal(buf[Headroom:], c.pkt) {
				t.Fatal("Encap modified the packet")
			}
			h, err := ParseHeader(buf)
			if err != nil {
				t.Fatal(err)
			}
			want := Header{Flags: 0x08, VNI: c.vni, Dst: macNodeB, Src: macNodeA, EtherType: c.etherType}
			if h != want {
				t.Fatalf("header = %+v, want %+v", h, want)
			}
			if r := [4]byte{buf[1], buf[2], buf[3], buf[7]}; r != [4]byte{} {
				t.Fatalf("reserved bytes % x, want zero", r)
			}
		})
	}
}

// TestEncapLargeBuffer: the frame is all of buf, whatever its capacity, and
// nothing beyond len(buf) is touched.
func TestEncapLargeBuffer(t *testing.T) {
	v4 := icmp4Packet()
	backing := make([]byte, 2048)
	for i := range backing {
		backing[i] = 0x5a
	}
	buf := backing[:Headroom+len(v4)]
	copy(buf[Headroom:], v4)
	if err := Encap(buf, 7, macNodeA, macNodeB); err != nil {
		t.Fatal(err)
	}
	for i, b := range backing[len(buf):] {
		if b != 0x5a {
			t.Fatalf("Encap wrote byte %d beyond len(buf)", len(buf)+i)
		}
	}
	pkt, err := Decap(buf, 7, macNodeA)
	if err != nil || !bytes.Equal(pkt, v4) {
		t.Fatalf("Decap(Encap) = %x, %v; want %x", pkt, err, v4)
	}
}

func TestParseHeaderShort(t *testing.T) {
	for n := range Headroom {
		if _, err := ParseHeader(make([]byte, n)); err != ErrShortBuffer {
			t.Errorf("ParseHeader(%d bytes) error = %v, want ErrShortBuffer", n, err)
		}
	}
	h, err := ParseHeader(frameHeader(0xabcdef, macNodeA, macNodeB, 0x1234))
	want := Header{Flags: 0x08, VNI: 0xabcdef, Dst: macNodeA, Src: macNodeB, EtherType: 0x1234}
	if err != nil || h != want {
		t.Errorf("ParseHeader = %+v, %v; want %+v", h, err, want)
	}
}

// TestNoAllocs proves the hot path allocates nothing, in both directions and
// on the drop paths.
func TestNoAllocs(t *testing.T) {
	v4 := icmp4Packet()
	buf := make([]byte, Headroom+len(v4))
	copy(buf[Headroom:], v4)
	frame := frameFor(t, v4, 1, macNodeB, macNodeA)
	bad := withByte(frame, offVNI+2, 9)
	for _, c := range []struct {
		name string
		fn   func()
	}{
		{"Encap", func() { _ = Encap(buf, 1, macNodeB, macNodeA) }},
		{"Decap", func() { _, _ = Decap(frame, 1, macNodeB) }},
		{"Decap rejecting", func() { _, _ = Decap(bad, 1, macNodeB) }},
		{"ParseHeader", func() { _, _ = ParseHeader(frame) }},
		{"FlowHash", func() { _ = FlowHash(v4) }},
		{"SourcePort", func() { _ = SourcePort(v4, SourcePortMin, SourcePortMax) }},
	} {
		if n := testing.AllocsPerRun(1000, c.fn); n != 0 {
			t.Errorf("%s: %v allocations per run, want 0", c.name, n)
		}
	}
}
