package tunnel

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"overlay/encap"
	"overlay/routes"
)

// The fuzz table: node A's view of a cluster with a dual-stack peer (with
// an IPv6 underlay address too), a node holding two leases (a stale one
// beside its new one), a subnet nested in another peer's shorter one, and
// an IPv6-only peer on an IPv6 underlay.
var (
	fuzzLocal = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fc00:0:0:1::/64")}
	fuzzPeers = []routes.Peer{
		{Subnet: netip.MustParsePrefix("10.244.2.0/24"), IPv6Subnet: netip.MustParsePrefix("fc00:0:0:2::/64"),
			Endpoint: netip.MustParseAddrPort("172.30.250.2:8472"), PublicIPv6: netip.MustParseAddr("fd00::2"), MAC: encap.MAC{2, 0, 0, 0, 0, 2}},
		{Subnet: netip.MustParsePrefix("10.244.3.0/24"), Endpoint: netip.MustParseAddrPort("172.30.250.3:8472"), MAC: encap.MAC{2, 0, 0, 0, 0, 3}},
		{Subnet: netip.MustParsePrefix("10.244.33.0/24"), Endpoint: netip.MustParseAddrPort("172.30.250.3:8472"), MAC: encap.MAC{2, 0, 0, 0, 0, 3}},
		{Subnet: netip.MustParsePrefix("10.244.128.0/17"), Endpoint: netip.MustParseAddrPort("172.30.250.4:8472"), MAC: encap.MAC{2, 0, 0, 0, 0, 4}},
		{Subnet: netip.MustParsePrefix("10.244.129.0/24"), Endpoint: netip.MustParseAddrPort("172.30.250.5:8472"), MAC: encap.MAC{2, 0, 0, 0, 0, 5}},
		{IPv6Subnet: netip.MustParsePrefix("fc00:0:0:6::/64"), Endpoint: netip.MustParseAddrPort("[fd00::6]:8472"), MAC: encap.MAC{2, 0, 0, 0, 0, 6}},
	}
	fuzzMAC = encap.MAC{2, 0, 0, 0, 0, 1}
	// Candidate outer addresses and inner sources, picked by index so the
	// fuzzer hits the table often; anything else comes from raw bytes.
	fuzzOuter = []string{"172.30.250.2", "fd00::2", "172.30.250.3", "172.30.250.4", "172.30.250.5", "fd00::6", "172.30.250.9", "::ffff:172.30.250.2"}
	fuzzInner = []string{"10.244.2.7", "fc00:0:0:2::7", "10.244.3.1", "10.244.33.200", "10.244.200.1", "10.244.129.9",
		"fc00:0:0:6::1", "10.244.1.5", "fc00:0:0:1::5", "192.0.2.1", "10.244.2.0"}
)

// slowVerdict is the reference for the source checks, written from their
// definition with netip and linear scans: it returns the prefix an
// accepted packet is attributed to (the zero Prefix for none) or the drop
// reason.
func slowVerdict(c SourceCheck, outer netip.Addr, srcMAC encap.MAC, inner netip.Addr) (netip.Prefix, DropReason, bool) {
	// The covering prefix, longest first, and whose it is (-1: ours).
	owner, best := -2, netip.Prefix{}
	try := func(p netip.Prefix, who int) {
		if p.IsValid() && p.Contains(inner) && (owner == -2 || p.Bits() > best.Bits()) {
			owner, best = who, p
		}
	}
	for _, p := range fuzzLocal {
		try(p, -1)
	}
	for i, p := range fuzzPeers {
		try(p.Subnet, i)
		try(p.IPv6Subnet, i)
	}
	var senders []int
	for i, p := range fuzzPeers {
		switch c {
		case SourceCheckStrict:
			if outer.IsValid() && (p.Endpoint.Addr() == outer.Unmap() || p.PublicIPv6 == outer.Unmap()) {
				senders = append(senders, i)
			}
		case SourceCheckNAT:
			if p.MAC == srcMAC {
				senders = append(senders, i)
			}
		}
	}
	switch {
	case c == SourceCheckOff:
		if owner < 0 {
			return netip.Prefix{}, 0, true
		}
		return best, 0, true
	case len(senders) == 0:
		return netip.Prefix{}, DropUnknownSource, false
	case owner < 0 || !slices.Contains(senders, owner):
		return netip.Prefix{}, DropSpoofedSource, false
	}
	// Several leases of one sender may cover the source; attribute to the
	// most specific, as the route table does.
	return best, 0, true
}

// FuzzSourceCheck runs the in pump's two halves of the check on arbitrary
// frames from chosen or arbitrary senders, under each SourceCheck, against
// slowVerdict.
func FuzzSourceCheck(f *testing.F) {
	var tb routes.Table
	if err := tb.Update(fuzzLocal, fuzzPeers); err != nil {
		f.Fatal(err)
	}
	snap := tb.Load()
	v4 := make([]byte, 20)
	v4[0] = 0x45
	binary.BigEndian.PutUint16(v4[2:], 20)
	v6 := make([]byte, 40)
	v6[0] = 0x60
	for c := range uint8(3) {
		for o := range uint8(len(fuzzOuter) + 1) {
			for i := range uint8(len(fuzzInner)) {
				f.Add(c, o, []byte{172, 30, 250, 2}, o%7, i, v4)
				f.Add(c, o, []byte{}, o%7, i, v6)
			}
		}
	}
	f.Add(uint8(0), uint8(255), []byte{10, 0, 0, 1}, uint8(255), uint8(255), []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 172, 30, 250, 2, 10, 244, 1, 1})
	f.Fuzz(func(t *testing.T, check, outerSel uint8, outerRaw []byte, macSel, innerSel uint8, pkt []byte) {
		c := SourceCheck(check % 3)
		var outer netip.Addr
		switch {
		case int(outerSel) < len(fuzzOuter):
			outer = netip.MustParseAddr(fuzzOuter[outerSel])
		case len(outerRaw) >= 16:
			outer = netip.AddrFrom16([16]byte(outerRaw))
		case len(outerRaw) >= 4:
			outer = netip.AddrFrom4([4]byte(outerRaw))
		}
		srcMAC := encap.MAC{2, 0, 0, 0, 0, macSel}
		if len(pkt) == 0 {
			return
		}
		pkt = slices.Clone(pkt)
		if int(innerSel) < len(fuzzInner) {
			a := netip.MustParseAddr(fuzzInner[innerSel])
			if a.Is4() && pkt[0]>>4 == 4 && len(pkt) >= 20 {
				b := a.As4()
				copy(pkt[12:16], b[:])
			} else if a.Is6() && pkt[0]>>4 == 6 && len(pkt) >= 40 {
				b := a.As16()
				copy(pkt[8:24], b[:])
			}
		}
		frame := make([]byte, encap.Headroom+len(pkt))
		copy(frame[encap.Headroom:], pkt)
		et := uint16(encap.EtherTypeIPv4)
		if pkt[0]>>4 == 6 {
			et = encap.EtherTypeIPv6
		}
		frame[0] = 0x08
		binary.BigEndian.PutUint32(frame[4:], 1<<8)
		copy(frame[encap.HeaderLen:], fuzzMAC[:])
		copy(frame[offInnerSrcMAC:], srcMAC[:])
		binary.BigEndian.PutUint16(frame[encap.Headroom-2:], et)
		inner, err := encap.Decap(frame, 1, fuzzMAC)
		if err != nil {
			return // the check sees only what Decap accepts
		}

		from, known := c.outer(snap, outer)
		var got DropReason
		r, ok := (*routes.Route)(nil), false
		if !known {
			got = DropUnknownSource
		} else {
			r, got, ok = c.inner(snap, from, frame, inner)
		}
		var src netip.Addr
		if inner[0]>>4 == 4 {
			src = netip.AddrFrom4([4]byte(inner[12:16]))
		} else {
			src = netip.AddrFrom16([16]byte(inner[8:24]))
		}
		want, wantReason, wantOK := slowVerdict(c, outer, srcMAC, src)
		if ok != wantOK || (!ok && got != wantReason) {
			t.Fatalf("%v check, outer %v, MAC %v, inner source %v: ok %v (%v), want ok %v (%v)", c, outer, srcMAC, src, ok, got, wantOK, wantReason)
		}
		var gotPrefix netip.Prefix
		if r != nil {
			gotPrefix = r.Prefix
		}
		if ok && gotPrefix != want {
			t.Fatalf("%v check, outer %v, inner source %v: attributed to %v, want %v", c, outer, src, gotPrefix, want)
		}
	})
}

// TestSourceCheckNoAllocs: both halves of every check, on accepted and
// refused packets, allocate nothing.
func TestSourceCheckNoAllocs(t *testing.T) {
	var tb routes.Table
	if err := tb.Update(fuzzLocal, fuzzPeers); err != nil {
		t.Fatal(err)
	}
	mk := func(src string, mac encap.MAC) ([]byte, []byte) {
		p := make([]byte, 20)
		p[0] = 0x45
		binary.BigEndian.PutUint16(p[2:], 20)
		a := netip.MustParseAddr(src).As4()
		copy(p[12:], a[:])
		f := append(make([]byte, encap.Headroom), p...)
		copy(f[offInnerSrcMAC:], mac[:])
		return f, f[encap.Headroom:]
	}
	okFrame, okPkt := mk("10.244.2.7", fuzzPeers[0].MAC)
	badFrame, badPkt := mk("10.244.3.7", fuzzPeers[0].MAC)
	peer, stranger := netip.MustParseAddr("172.30.250.2"), netip.MustParseAddr("172.30.250.9")
	var passed int
	allocs := testing.AllocsPerRun(1000, func() {
		snap := tb.Load()
		for _, c := range []SourceCheck{SourceCheckStrict, SourceCheckNAT, SourceCheckOff} {
			for _, outer := range []netip.Addr{peer, stranger} {
				from, known := c.outer(snap, outer)
				if !known {
					continue
				}
				if _, _, ok := c.inner(snap, from, okFrame, okPkt); ok {
					passed++
				}
				if _, _, ok := c.inner(snap, from, badFrame, badPkt); ok {
					passed++
				}
			}
		}
	})
	if allocs != 0 {
		t.Errorf("the source checks allocate %v times per run, want 0", allocs)
	}
	// Per run: strict passes the peer's good packet (1); NAT and off see
	// both senders: NAT passes the good packet twice (2), off all four.
	if want := 1001 * (1 + 2 + 4); passed != want {
		t.Errorf("%d packets passed, want %d", passed, want)
	}
}
