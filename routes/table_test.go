package routes

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"overlay/encap"
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }

func peer(subnet, subnet6, endpoint string, mac byte) Peer {
	p := Peer{Endpoint: netip.MustParseAddrPort(endpoint), MAC: encap.MAC{0x02, 0, 0, 0, 0, mac}}
	if subnet != "" {
		p.Subnet = mustPrefix(subnet)
	}
	if subnet6 != "" {
		p.IPv6Subnet = mustPrefix(subnet6)
	}
	return p
}

func TestLookup(t *testing.T) {
	var tb Table
	if r := tb.Lookup(mustAddr("10.244.1.1")); r != nil {
		t.Fatalf("zero Table: Lookup = %+v, want nil", r)
	}
	local := []netip.Prefix{mustPrefix("10.244.62.0/24"), mustPrefix("fc00:0:0:3e::/64")}
	peers := []Peer{
		peer("10.244.1.0/24", "fc00:0:0:1::/64", "172.30.250.11:8472", 1),
		peer("10.244.2.0/24", "", "172.30.250.12:0", 2),
		peer("10.244.128.0/17", "", "172.30.250.13:8472", 3), // shorter prefix, same network
		peer("10.244.129.0/24", "", "172.30.250.14:4789", 4), // more specific inside it
		peer("", "fc00:0:0:5::/64", "[fd00::5]:8472", 5),
	}
	if err := tb.Update(local, peers); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dst   string
		want  string // matched prefix, "" for no route
		local bool
		mac   byte
	}{
		{"10.244.1.7", "10.244.1.0/24", false, 1},
		{"10.244.1.0", "10.244.1.0/24", false, 1},
		{"10.244.1.255", "10.244.1.0/24", false, 1},
		{"10.244.2.200", "10.244.2.0/24", false, 2},
		{"10.244.3.1", "", false, 0},
		{"10.244.62.9", "10.244.62.0/24", true, 0},
		{"10.244.200.1", "10.244.128.0/17", false, 3},
		{"10.244.129.1", "10.244.129.0/24", false, 4},
		{"::ffff:10.244.1.7", "10.244.1.0/24", false, 1},
		{"fc00:0:0:1::1234", "fc00:0:0:1::/64", false, 1},
		{"fc00:0:0:3e::1", "fc00:0:0:3e::/64", true, 0},
		{"fc00:0:0:5:ffff:ffff:ffff:ffff", "fc00:0:0:5::/64", false, 5},
		{"fc00:0:0:6::1", "", false, 0},
		{"192.168.1.1", "", false, 0},
	}
	s := tb.Load()
	for _, tt := range tests {
		r := s.Lookup(mustAddr(tt.dst))
		if tt.want == "" {
			if r != nil {
				t.Errorf("Lookup(%s) = %v, want no route", tt.dst, r.Prefix)
			}
			continue
		}
		if r == nil {
			t.Errorf("Lookup(%s) = nil, want %s", tt.dst, tt.want)
			continue
		}
		if r.Prefix != mustPrefix(tt.want) || r.Local != tt.local || r.Peer.MAC[5] != tt.mac {
			t.Errorf("Lookup(%s) = %v local=%v mac=%v, want %s local=%v mac ..%02x", tt.dst, r.Prefix, r.Local, r.Peer.MAC, tt.want, tt.local, tt.mac)
		}
		if r.Local != (r.Counters == nil) {
			t.Errorf("Lookup(%s): Local=%v but Counters=%p", tt.dst, r.Local, r.Counters)
		}
	}
	// The raw-header forms agree with Lookup.
	if r := s.Lookup4([4]byte{10, 244, 129, 1}); r == nil || r.Peer.MAC[5] != 4 {
		t.Errorf("Lookup4(10.244.129.1) = %+v", r)
	}
	if r := s.Lookup6(mustAddr("fc00:0:0:1::9").As16()); r == nil || r.Peer.MAC[5] != 1 {
		t.Errorf("Lookup6(fc00:0:0:1::9) = %+v", r)
	}
	// Both routes of a dual-stack peer share its counters.
	a, b := s.Lookup(mustAddr("10.244.1.1")), s.Lookup(mustAddr("fc00:0:0:1::1"))
	if a.Counters != b.Counters {
		t.Error("dual-stack peer has two Counters")
	}
	if got := s.Len(); got != len(peers) {
		t.Errorf("Len = %d, want %d", got, len(peers))
	}
	if la, ok := s.LocalAddr(false); !ok || la != mustAddr("10.244.62.0") {
		t.Errorf("LocalAddr(v4) = %v, %v", la, ok)
	}
	if la, ok := s.LocalAddr(true); !ok || la != mustAddr("fc00:0:0:3e::") {
		t.Errorf("LocalAddr(v6) = %v, %v", la, ok)
	}
}

func TestUpdateSkipsInvalidPeers(t *testing.T) {
	var tb Table
	local := []netip.Prefix{mustPrefix("10.244.62.0/24")}
	peers := []Peer{
		peer("10.244.1.0/24", "", "172.30.250.11:8472", 1),
		peer("10.244.1.0/24", "", "172.30.250.99:8472", 9),                                // duplicate subnet
		peer("10.244.62.0/25", "", "172.30.250.12:8472", 2),                               // overlaps ours
		{MAC: encap.MAC{3}, Endpoint: netip.MustParseAddrPort("172.30.250.13:8472")},      // no subnet
		peer("10.244.4.0/24", "", "0.0.0.0:8472", 4),                                      // no endpoint
		{Subnet: mustPrefix("fc00::/64"), Endpoint: netip.MustParseAddrPort("1.2.3.4:1")}, // v6 in v4 field
		peer("10.244.5.0/24", "", "172.30.250.15:8472", 5),
	}
	err := tb.Update(local, peers)
	if !errors.Is(err, ErrInvalidPeer) {
		t.Fatalf("Update error = %v, want ErrInvalidPeer", err)
	}
	if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != 5 {
		t.Errorf("Update reported %d skipped peers, want 5: %v", n, err)
	}
	s := tb.Load()
	if s.Len() != 2 {
		t.Fatalf("installed %d peers, want 2", s.Len())
	}
	if r := s.Lookup(mustAddr("10.244.1.1")); r == nil || r.Peer.MAC[5] != 1 {
		t.Errorf("first claimant of 10.244.1.0/24 lost: %+v", r)
	}
	if r := s.Lookup(mustAddr("10.244.5.1")); r == nil {
		t.Error("valid peer after invalid ones not installed")
	}
	if err := tb.Update([]netip.Prefix{{}}, nil); !errors.Is(err, ErrInvalidLocal) {
		t.Errorf("Update with invalid local = %v, want ErrInvalidLocal", err)
	}
	if tb.Load() != s {
		t.Error("failed Update replaced the snapshot")
	}
}

func TestCountersSurviveUpdate(t *testing.T) {
	var tb Table
	p1 := peer("10.244.1.0/24", "", "172.30.250.11:8472", 1)
	p2 := peer("10.244.2.0/24", "", "172.30.250.12:8472", 2)
	if err := tb.Update(nil, []Peer{p1, p2}); err != nil {
		t.Fatal(err)
	}
	c1 := tb.Lookup(mustAddr("10.244.1.1")).Counters
	c1.AddTx(3, 300, 1e9)
	c1.AddRx(2, 200, 2e9)
	// The peer's node moves to a new underlay address: same lease, same
	// counters. Peer 2 goes away and comes back: fresh counters.
	p1.Endpoint = netip.MustParseAddrPort("172.30.250.21:8472")
	if err := tb.Update(nil, []Peer{p1}); err != nil {
		t.Fatal(err)
	}
	if err := tb.Update(nil, []Peer{p2, p1}); err != nil {
		t.Fatal(err)
	}
	r := tb.Lookup(mustAddr("10.244.1.1"))
	if r.Counters != c1 || r.Peer.Endpoint != p1.Endpoint {
		t.Fatalf("peer 1 after update: counters %p (want %p), endpoint %v", r.Counters, c1, r.Peer.Endpoint)
	}
	st := tb.Stats()
	if len(st) != 2 || st[0].Subnet != p1.Subnet || st[1].Subnet != p2.Subnet {
		t.Fatalf("Stats not sorted by subnet: %+v", st)
	}
	if st[0].TxPackets != 3 || st[0].TxBytes != 300 || st[0].RxPackets != 2 || st[0].RxBytes != 200 ||
		st[0].LastTx.UnixNano() != 1e9 || st[0].LastRx.UnixNano() != 2e9 {
		t.Errorf("peer 1 stats = %+v", st[0])
	}
	if st[1].TxPackets != 0 || !st[1].LastRx.IsZero() {
		t.Errorf("re-added peer 2 kept old counters: %+v", st[1])
	}
}

// slowLookup is the reference: a linear scan for the longest matching prefix.
func slowLookup(local []netip.Prefix, peers []Peer, dst netip.Addr) (netip.Prefix, bool) {
	dst = dst.Unmap()
	var best netip.Prefix
	found := false
	try := func(p netip.Prefix) {
		if p.IsValid() && p.Contains(dst) && (!found || p.Bits() > best.Bits()) {
			best, found = p, true
		}
	}
	for _, l := range local {
		try(l)
	}
	for _, p := range peers {
		try(p.Subnet)
		try(p.IPv6Subnet)
	}
	return best, found
}

func TestLookupMatchesLinearScan(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 20 {
		var peers []Peer
		seen := map[netip.Prefix]bool{}
		local := []netip.Prefix{mustPrefix("10.244.0.0/24"), mustPrefix("fc00::/64")}
		for range 200 {
			bits := 8 + r.IntN(25)
			a := netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
			p := netip.PrefixFrom(a, bits).Masked()
			bits6 := 16 + r.IntN(113)
			var b16 [16]byte
			b16[0], b16[1], b16[7], b16[15] = 0xfc, byte(r.IntN(2)), byte(r.IntN(256)), byte(r.IntN(256))
			p6 := netip.PrefixFrom(netip.AddrFrom16(b16), bits6).Masked()
			if seen[p] || seen[p6] || p.Overlaps(local[0]) || p6.Overlaps(local[1]) {
				continue
			}
			seen[p], seen[p6] = true, true
			peers = append(peers, Peer{Subnet: p, IPv6Subnet: p6, Endpoint: netip.MustParseAddrPort("172.30.250.1:8472")})
		}
		var tb Table
		if err := tb.Update(local, peers); err != nil {
			t.Fatal(err)
		}
		s := tb.Load()
		for range 2000 {
			var dst netip.Addr
			if r.IntN(2) == 0 {
				dst = netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
			} else {
				var b16 [16]byte
				b16[0], b16[1], b16[7], b16[15] = 0xfc, byte(r.IntN(2)), byte(r.IntN(256)), byte(r.IntN(256))
				dst = netip.AddrFrom16(b16)
			}
			want, ok := slowLookup(local, peers, dst)
			got := s.Lookup(dst)
			if !ok {
				if got != nil {
					t.Fatalf("round %d: Lookup(%v) = %v, want nil", round, dst, got.Prefix)
				}
				continue
			}
			if got == nil || got.Prefix != want {
				t.Fatalf("round %d: Lookup(%v) = %+v, want %v", round, dst, got, want)
			}
		}
	}
}

func manyPeers(n int) []Peer {
	peers := make([]Peer, n)
	for i := range peers {
		// 10.0.0.0/8 in /24s: 65536 subnets available.
		peers[i] = Peer{
			Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
			Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{172, 30, byte(i >> 8), byte(i)}), 8472),
			MAC:      encap.MAC{2, 0, 0, 0, byte(i >> 8), byte(i)},
		}
	}
	return peers
}

func TestLookupNoAllocs(t *testing.T) {
	var tb Table
	if err := tb.Update([]netip.Prefix{mustPrefix("10.255.0.0/24")}, manyPeers(10000)); err != nil {
		t.Fatal(err)
	}
	dst := mustAddr("10.39.15.7")
	dst6 := mustAddr("fc00::1")
	var sink *Route
	allocs := testing.AllocsPerRun(1000, func() {
		s := tb.Load()
		sink = s.Lookup(dst)
		_ = s.Lookup(dst6)
		_ = s.Lookup4([4]byte{10, 1, 2, 3})
	})
	if allocs != 0 {
		t.Errorf("Lookup allocates %v times per run, want 0", allocs)
	}
	if sink == nil || sink.Peer.MAC[4] != 39 || sink.Peer.MAC[5] != 15 {
		t.Errorf("Lookup(%v) = %+v", dst, sink)
	}
}

// TestConcurrentUpdate runs lookups while the table is replaced, for the
// race detector, and checks every lookup sees a consistent snapshot.
func TestConcurrentUpdate(t *testing.T) {
	var tb Table
	a := manyPeers(500)
	b := manyPeers(500)
	for i := range b {
		b[i].MAC[0] = 0x06 // a second generation, told apart by its MAC
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
				s := tb.Load()
				first := s.Lookup4([4]byte{10, 0, 0, 1})
				last := s.Lookup4([4]byte{10, 1, 243, 1})
				if (first == nil) != (last == nil) || (first != nil && first.Peer.MAC[0] != last.Peer.MAC[0]) {
					bad.Add(1)
				}
			}
		})
	}
	for i := range 200 {
		ps := a
		if i%2 == 1 {
			ps = b
		}
		if err := tb.Update(nil, ps); err != nil {
			t.Error(err)
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	if n := bad.Load(); n != 0 {
		t.Errorf("%d lookups saw a mix of two snapshots", n)
	}
}

// benchTable returns a snapshot of n peers and 256 probes spread over them:
// an address inside a peer's subnet, and that peer.
func benchTable(b *testing.B, n int) (*Snapshot, [][4]byte, []Peer) {
	b.Helper()
	var tb Table
	peers := manyPeers(n)
	if err := tb.Update([]netip.Prefix{mustPrefix("10.255.0.0/24")}, peers); err != nil {
		b.Fatal(err)
	}
	dsts := make([][4]byte, 256)
	owners := make([]Peer, 256)
	for i := range dsts {
		owners[i] = peers[(i*7919)%n]
		dsts[i] = owners[i].Subnet.Addr().As4()
		dsts[i][3] = byte(i)
	}
	return tb.Load(), dsts, owners
}

func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			s, dsts, _ := benchTable(b, n)
			b.ReportAllocs()
			b.ResetTimer()
			var miss int
			for i := range b.N {
				if s.Lookup4(dsts[i&255]) == nil {
					miss++
				}
			}
			if miss != 0 {
				b.Fatalf("%d misses", miss)
			}
		})
	}
}

func BenchmarkUpdate10000(b *testing.B) {
	var tb Table
	peers := manyPeers(10000)
	b.ReportAllocs()
	for b.Loop() {
		if err := tb.Update(nil, peers); err != nil {
			b.Fatal(err)
		}
	}
}
