package routes

import (
	"fmt"
	"net/netip"
	"testing"

	"overlay/encap"
)

func TestSources(t *testing.T) {
	var tb Table
	if s := tb.Load().SourceAddr(mustAddr("172.30.250.11")); s != nil {
		t.Fatalf("zero Table: SourceAddr = %+v, want nil", s)
	}
	local := []netip.Prefix{mustPrefix("10.244.62.0/24"), mustPrefix("fc00:0:0:3e::/64")}
	b := peer("10.244.1.0/24", "fc00:0:0:1::/64", "172.30.250.11:8472", 1)
	b.PublicIPv6 = mustAddr("fd00::11")
	c := peer("10.244.2.0/24", "", "172.30.250.12:0", 2)
	cStale := peer("10.244.9.0/24", "", "172.30.250.12:8472", 2) // the same node's old lease
	d := peer("", "fc00:0:0:5::/64", "[fd00::5]:8472", 5)
	if err := tb.Update(local, []Peer{b, c, cStale, d}); err != nil {
		t.Fatal(err)
	}
	s := tb.Load()
	route := func(a string) *Route {
		r := s.Lookup(mustAddr(a))
		if r == nil {
			t.Fatalf("no route for %s", a)
		}
		return r
	}
	tests := []struct {
		src   *Source
		name  string
		owns  []string // inner sources the sender may use
		other []string // inner sources it may not
	}{
		{s.SourceAddr(mustAddr("172.30.250.11")), "B by PublicIP", []string{"10.244.1.7", "fc00:0:0:1::7"}, []string{"10.244.2.7", "10.244.62.1", "fc00:0:0:3e::1", "fc00:0:0:5::1"}},
		{s.SourceAddr(mustAddr("::ffff:172.30.250.11")), "B by mapped PublicIP", []string{"10.244.1.0"}, []string{"10.244.9.1"}},
		{s.SourceAddr(mustAddr("fd00::11")), "B by PublicIPv6", []string{"10.244.1.7", "fc00:0:0:1::7"}, []string{"10.244.2.7"}},
		{s.SourceMAC(b.MAC), "B by VtepMAC", []string{"10.244.1.7", "fc00:0:0:1::7"}, []string{"10.244.2.7"}},
		{s.SourceAddr(mustAddr("172.30.250.12")), "C, two leases", []string{"10.244.2.7", "10.244.9.7"}, []string{"10.244.1.7"}},
		{s.SourceMAC(c.MAC), "C by VtepMAC", []string{"10.244.2.7", "10.244.9.7"}, []string{"10.244.1.7"}},
		{s.SourceAddr(mustAddr("fd00::5")), "D over IPv6", []string{"fc00:0:0:5::1"}, []string{"fc00:0:0:1::7", "10.244.1.7"}},
	}
	for _, tt := range tests {
		if tt.src == nil {
			t.Errorf("%s: no Source", tt.name)
			continue
		}
		for _, a := range tt.owns {
			if !tt.src.Owns(route(a)) {
				t.Errorf("%s does not own %s", tt.name, a)
			}
		}
		for _, a := range tt.other {
			if tt.src.Owns(route(a)) {
				t.Errorf("%s owns %s", tt.name, a)
			}
		}
		if tt.src.Owns(nil) {
			t.Errorf("%s owns the nil route", tt.name)
		}
	}
	for _, a := range []string{"172.30.250.13", "172.30.250.1", "fd00::12", "0.0.0.0", "::"} {
		if src := s.SourceAddr(mustAddr(a)); src != nil {
			t.Errorf("SourceAddr(%s) = %+v, want nil", a, src)
		}
	}
	if src := s.SourceAddr(netip.Addr{}); src != nil {
		t.Errorf("SourceAddr(zero Addr) = %+v, want nil", src)
	}
	if src := s.SourceMAC(encap.MAC{0x02, 0, 0, 0, 0, 0x77}); src != nil {
		t.Errorf("SourceMAC(unknown) = %+v, want nil", src)
	}
	var unknown *Source
	if unknown.Owns(route("10.244.1.7")) {
		t.Error("the nil Source owns a route")
	}

	// B leaves and another node takes its subnet: B's addresses and MAC
	// no longer send.
	b2 := peer("10.244.1.0/24", "", "172.30.250.21:8472", 7) // another node took the subnet
	if err := tb.Update(local, []Peer{b2, c}); err != nil {
		t.Fatal(err)
	}
	s = tb.Load()
	for _, a := range []string{"172.30.250.11", "fd00::11"} {
		if src := s.SourceAddr(mustAddr(a)); src != nil {
			t.Errorf("after B left: SourceAddr(%s) = %+v, want nil", a, src)
		}
	}
	if src := s.SourceMAC(b.MAC); src != nil {
		t.Errorf("after B left: SourceMAC(B) = %+v", src)
	}
	if src := s.SourceAddr(mustAddr("172.30.250.21")); !src.Owns(route("10.244.1.7")) {
		t.Error("the subnet's new holder does not own it")
	}
	if src := s.SourceAddr(mustAddr("172.30.250.12")); src.Owns(route("10.244.1.7")) || !src.Owns(route("10.244.2.1")) {
		t.Error("C's ownership is wrong after the update")
	}
}

func TestUpdateRejectsBadPublicIPv6(t *testing.T) {
	var tb Table
	bad := peer("10.244.1.0/24", "", "172.30.250.11:8472", 1)
	bad.PublicIPv6 = mustAddr("172.30.250.12")
	good := peer("10.244.2.0/24", "", "172.30.250.12:8472", 2)
	if err := tb.Update(nil, []Peer{bad, good}); err == nil {
		t.Fatal("Update accepted an IPv4 address as PublicIPv6")
	}
	s := tb.Load()
	if s.Len() != 1 || s.SourceAddr(mustAddr("172.30.250.11")) != nil || s.SourceAddr(mustAddr("172.30.250.12")) == nil {
		t.Errorf("table after a skipped peer: %d peers", s.Len())
	}
}

func TestSourceNoAllocs(t *testing.T) {
	var tb Table
	if err := tb.Update([]netip.Prefix{mustPrefix("10.255.0.0/24")}, manyPeers(10000)); err != nil {
		t.Fatal(err)
	}
	src := mustAddr("172.30.39.15")
	inner := [4]byte{10, 39, 15, 7}
	var owns bool
	allocs := testing.AllocsPerRun(1000, func() {
		s := tb.Load()
		from := s.SourceAddr(src)
		owns = from.Owns(s.Lookup4(inner))
		_ = s.SourceAddr(mustAddr("fd00::1"))
		_ = s.SourceMAC(encap.MAC{2, 0, 0, 0, 39, 15})
	})
	if allocs != 0 {
		t.Errorf("source lookups allocate %v times per run, want 0", allocs)
	}
	if !owns {
		t.Errorf("peer %v does not own %v", src, inner)
	}
}

// BenchmarkSourceCheck measures the lookups the in pump makes for the
// source checks: the outer address's Source (once per message) and Owns of
// the inner source's route (whose lookup the pump makes anyway, for the
// peer's counters). One op is one message of one packet.
func BenchmarkSourceCheck(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			s, inner, owners := benchTable(b, n)
			outer := make([]netip.Addr, len(owners))
			for i, p := range owners {
				outer[i] = p.Endpoint.Addr()
			}
			b.ReportAllocs()
			var refused int
			for i := 0; b.Loop(); i++ {
				if !s.SourceAddr(outer[i&255]).Owns(s.Lookup4(inner[i&255])) {
					refused++
				}
			}
			if refused != 0 {
				b.Fatalf("%d refused", refused)
			}
		})
	}
}
