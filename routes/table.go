package routes

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"overlay/encap"
)

// Peer is a remote node as its subnet lease describes it.
type Peer struct {
	// Subnet is the node's IPv4 pod subnet (e.g. 10.244.62.0/24). It may be
	// the zero Prefix for an IPv6-only node.
	Subnet netip.Prefix
	// IPv6Subnet is the node's IPv6 pod subnet, or the zero Prefix.
	IPv6Subnet netip.Prefix
	// Endpoint is the node's underlay address (the lease's PublicIP or
	// PublicIPv6) and VXLAN port. Port 0 means the datapath's default port.
	// Frames from the node are expected from Endpoint's address (any
	// port): see Source.
	Endpoint netip.AddrPort
	// PublicIPv6 is the lease's IPv6 underlay address when Endpoint holds
	// its IPv4 one (dual-stack underlay), else the zero Addr: frames from
	// the node may come from it too.
	PublicIPv6 netip.Addr
	// MAC is the node's VtepMAC, written as the inner destination MAC.
	MAC encap.MAC
}

// key identifies a peer across snapshots: its first subnet, which is what
// its lease is named after.
func (p Peer) key() netip.Prefix {
	if p.Subnet.IsValid() {
		return p.Subnet
	}
	return p.IPv6Subnet
}

// cacheLine is the padding unit between fields written by different
// goroutines: 128 bytes covers the adjacent-line prefetcher of x86 and the
// 128-byte lines of some arm64 parts.
const cacheLine = 128

// Counters are one peer's traffic figures. The transmit fields are written
// by the datapath's out pump and the receive fields by its in pump; each
// group has its own cache line so the two pumps never contend. Anyone may
// read them at any time.
//
// The zero value is a valid set of zero counters. A Counters must not be
// copied after first use.
type Counters struct {
	// TxPackets and TxBytes count inner IP packets and their bytes sent to
	// the peer. LastTx is the time of the last send, in Unix nanoseconds.
	TxPackets, TxBytes atomic.Uint64
	LastTx             atomic.Int64
	_                  [cacheLine - 24]byte
	// RxPackets and RxBytes count inner IP packets and bytes received from
	// the peer (attributed by inner source address, never by the outer one).
	// LastRx is the time of the last receive, in Unix nanoseconds.
	RxPackets, RxBytes atomic.Uint64
	LastRx             atomic.Int64
	_                  [cacheLine - 24]byte
}

// AddTx records n packets of b bytes sent at now (Unix nanoseconds).
func (c *Counters) AddTx(n, b uint64, now int64) {
	c.TxPackets.Add(n)
	c.TxBytes.Add(b)
	c.LastTx.Store(now)
}

// AddRx records n packets of b bytes received at now (Unix nanoseconds).
func (c *Counters) AddRx(n, b uint64, now int64) {
	c.RxPackets.Add(n)
	c.RxBytes.Add(b)
	c.LastRx.Store(now)
}

// Route is what Lookup finds for a destination: either one of our own
// subnets (Local) or a peer's.
type Route struct {
	// Prefix is the subnet that matched.
	Prefix netip.Prefix
	// Local reports that Prefix is one of our own subnets: a packet for it
	// that reaches the overlay has nowhere to go (a routing loop).
	Local bool
	// Peer is the node that owns Prefix; zero when Local.
	Peer Peer
	// Counters are the peer's traffic counters, shared by both routes of a
	// dual-stack peer and carried over across updates; nil when Local.
	Counters *Counters

	// owner numbers the peer within its snapshot, from 1; 0 when Local.
	// Source.Owns compares it.
	owner uint32
}

// Snapshot is an immutable peer table. The zero value is an empty table.
// A Snapshot is safe for concurrent use; nothing in it changes after Update
// publishes it (its Counters are atomic).
type Snapshot struct {
	v4    []table4 // by prefix length, longest first
	v6    []table6
	local []netip.Prefix
	peers []*Route // one per peer, sorted by key, for listing
	src   sources  // who may send, for the datapath's source checks
}

type table4 struct {
	mask uint32
	m    map[uint32]*Route
}

type table6 struct {
	hi, lo uint64 // mask
	m      map[[2]uint64]*Route
}

// Lookup returns the route for dst by longest prefix match, or nil if no
// subnet covers it. It allocates nothing; its cost grows with the number of
// distinct prefix lengths in the table, not the number of peers.
func (s *Snapshot) Lookup(dst netip.Addr) *Route {
	if s == nil {
		return nil
	}
	if dst.Is4() || dst.Is4In6() {
		a := dst.As4()
		return s.lookup4(binary.BigEndian.Uint32(a[:]))
	}
	if dst.Is6() {
		a := dst.As16()
		return s.lookup6(binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:]))
	}
	return nil
}

// Lookup4 is Lookup for an IPv4 address in network byte order, as it sits
// in a packet header; the datapath uses it to skip building a netip.Addr.
func (s *Snapshot) Lookup4(a [4]byte) *Route {
	if s == nil {
		return nil
	}
	return s.lookup4(binary.BigEndian.Uint32(a[:]))
}

// Lookup6 is Lookup for an IPv6 address as it sits in a packet header.
func (s *Snapshot) Lookup6(a [16]byte) *Route {
	if s == nil {
		return nil
	}
	return s.lookup6(binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:]))
}

func (s *Snapshot) lookup4(a uint32) *Route {
	for i := range s.v4 {
		t := &s.v4[i]
		if r, ok := t.m[a&t.mask]; ok {
			return r
		}
	}
	return nil
}

func (s *Snapshot) lookup6(hi, lo uint64) *Route {
	for i := range s.v6 {
		t := &s.v6[i]
		if r, ok := t.m[[2]uint64{hi & t.hi, lo & t.lo}]; ok {
			return r
		}
	}
	return nil
}

// Local returns our own subnets as given to the last Update.
func (s *Snapshot) Local() []netip.Prefix {
	if s == nil {
		return nil
	}
	return slices.Clone(s.local)
}

// LocalAddr returns the overlay address of the TUN device for the family of
// dst: the network address of our own subnet of that family (flannel's
// flannel.1 carries 10.244.62.0/32 for subnet 10.244.62.0/24). It is the
// source of the ICMP errors the datapath generates.
func (s *Snapshot) LocalAddr(is6 bool) (netip.Addr, bool) {
	if s == nil {
		return netip.Addr{}, false
	}
	for _, p := range s.local {
		if p.Addr().Is6() == is6 {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// Len returns the number of peers.
func (s *Snapshot) Len() int {
	if s == nil {
		return 0
	}
	return len(s.peers)
}

// Peers returns one route per peer, sorted by subnet: the IPv4 route of a
// dual-stack peer, else its IPv6 route. The routes are shared with the
// snapshot and must not be modified.
func (s *Snapshot) Peers() []*Route {
	if s == nil {
		return nil
	}
	return slices.Clone(s.peers)
}

// Table is the peer table the datapath reads. The zero value is an empty
// table ready to use. Load and Lookup are safe for concurrent use with each
// other and with Update, and never block; concurrent Updates are serialized.
type Table struct {
	snap atomic.Pointer[Snapshot]
	mu   sync.Mutex // serializes Update; readers never take it
}

// Load returns the current snapshot. It is never nil.
func (t *Table) Load() *Snapshot {
	if s := t.snap.Load(); s != nil {
		return s
	}
	return &emptySnapshot
}

var emptySnapshot Snapshot

// Lookup is t.Load().Lookup(dst). A datapath that looks up a batch of
// packets should Load once per batch instead.
func (t *Table) Lookup(dst netip.Addr) *Route { return t.Load().Lookup(dst) }

// ErrInvalidPeer is wrapped by the error Update returns for each peer it
// skipped. The caller should log it; the rest of the table is installed.
var ErrInvalidPeer = errors.New("routes: invalid peer")

// ErrInvalidLocal is returned by Update when one of our own subnets is not a
// valid prefix; nothing is installed.
var ErrInvalidLocal = errors.New("routes: invalid local subnet")

// Update replaces the table with local (our own subnets, one per family) and
// peers. It builds a new snapshot and swaps it in atomically; packets in
// flight keep using the old one. A peer whose subnet is unchanged keeps its
// Counters.
//
// Peers with an invalid subnet or endpoint, or whose subnet overlaps one of
// ours or duplicates another peer's, are skipped; Update installs the rest
// and returns an error wrapping ErrInvalidPeer for each skipped peer.
func (t *Table) Update(local []netip.Prefix, peers []Peer) error {
	for _, p := range local {
		if !p.IsValid() {
			return fmt.Errorf("%w: %v", ErrInvalidLocal, p)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.Load()
	counters := make(map[netip.Prefix]*Counters, len(old.peers))
	for _, r := range old.peers {
		counters[r.Peer.key()] = r.Counters
	}

	b := newBuilder()
	s := &Snapshot{}
	for _, p := range local {
		p = p.Masked()
		s.local = append(s.local, p)
		b.add(&Route{Prefix: p, Local: true})
	}
	var errs []error
	s.src = newSources()
	for _, p := range peers {
		if err := b.checkPeer(p, s.local); err != nil {
			errs = append(errs, err)
			continue
		}
		p.Subnet, p.IPv6Subnet = masked(p.Subnet), masked(p.IPv6Subnet)
		c := counters[p.key()]
		if c == nil {
			c = new(Counters)
		}
		owner := uint32(len(s.peers) + 1)
		s.src.add(owner, p)
		var first *Route
		for _, pfx := range []netip.Prefix{p.Subnet, p.IPv6Subnet} {
			if !pfx.IsValid() {
				continue
			}
			r := &Route{Prefix: pfx, Peer: p, Counters: c, owner: owner}
			b.add(r)
			if first == nil {
				first = r
			}
		}
		s.peers = append(s.peers, first)
	}
	slices.SortFunc(s.peers, func(a, b *Route) int { return comparePrefix(a.Prefix, b.Prefix) })
	s.v4, s.v6 = b.v4(), b.v6()
	t.snap.Store(s)
	return errors.Join(errs...)
}

func masked(p netip.Prefix) netip.Prefix {
	if !p.IsValid() {
		return p
	}
	return p.Masked()
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// builder collects routes by family and prefix length.
type builder struct {
	m4 map[int]map[uint32]*Route
	m6 map[int]map[[2]uint64]*Route
}

func newBuilder() *builder {
	return &builder{m4: map[int]map[uint32]*Route{}, m6: map[int]map[[2]uint64]*Route{}}
}

func (b *builder) has(p netip.Prefix) bool {
	if p.Addr().Is4() {
		a := p.Addr().As4()
		_, ok := b.m4[p.Bits()][binary.BigEndian.Uint32(a[:])]
		return ok
	}
	a := p.Addr().As16()
	_, ok := b.m6[p.Bits()][[2]uint64{binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])}]
	return ok
}

func (b *builder) add(r *Route) {
	p := r.Prefix
	if p.Addr().Is4() {
		m := b.m4[p.Bits()]
		if m == nil {
			m = map[uint32]*Route{}
			b.m4[p.Bits()] = m
		}
		a := p.Addr().As4()
		m[binary.BigEndian.Uint32(a[:])] = r
		return
	}
	m := b.m6[p.Bits()]
	if m == nil {
		m = map[[2]uint64]*Route{}
		b.m6[p.Bits()] = m
	}
	a := p.Addr().As16()
	m[[2]uint64{binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])}] = r
}

func (b *builder) checkPeer(p Peer, local []netip.Prefix) error {
	if !p.Subnet.IsValid() && !p.IPv6Subnet.IsValid() {
		return fmt.Errorf("%w: no subnet (endpoint %v)", ErrInvalidPeer, p.Endpoint)
	}
	if p.Subnet.IsValid() && !p.Subnet.Addr().Is4() {
		return fmt.Errorf("%w: Subnet %v is not IPv4", ErrInvalidPeer, p.Subnet)
	}
	if p.IPv6Subnet.IsValid() && !p.IPv6Subnet.Addr().Is6() {
		return fmt.Errorf("%w: IPv6Subnet %v is not IPv6", ErrInvalidPeer, p.IPv6Subnet)
	}
	if !p.Endpoint.Addr().IsValid() || p.Endpoint.Addr().IsUnspecified() {
		return fmt.Errorf("%w: subnet %v has invalid endpoint %v", ErrInvalidPeer, p.key(), p.Endpoint)
	}
	if a := p.PublicIPv6; a.IsValid() && (!a.Is6() || a.Is4In6() || a.IsUnspecified()) {
		return fmt.Errorf("%w: subnet %v has invalid PublicIPv6 %v", ErrInvalidPeer, p.key(), a)
	}
	for _, pfx := range []netip.Prefix{p.Subnet, p.IPv6Subnet} {
		if !pfx.IsValid() {
			continue
		}
		pfx = pfx.Masked()
		for _, l := range local {
			if l.Overlaps(pfx) {
				return fmt.Errorf("%w: subnet %v overlaps local subnet %v", ErrInvalidPeer, pfx, l)
			}
		}
		if b.has(pfx) {
			return fmt.Errorf("%w: subnet %v is claimed twice", ErrInvalidPeer, pfx)
		}
	}
	return nil
}

func (b *builder) v4() []table4 {
	var ts []table4
	for bits, m := range b.m4 {
		ts = append(ts, table4{mask: ^uint32(0) << (32 - bits), m: m})
	}
	slices.SortFunc(ts, func(x, y table4) int { return cmp.Compare(y.mask, x.mask) })
	return ts
}

func (b *builder) v6() []table6 {
	type lt struct {
		bits int
		t    table6
	}
	var ls []lt
	for bits, m := range b.m6 {
		ls = append(ls, lt{bits, table6{hi: mask64(bits), lo: mask64(bits - 64), m: m}})
	}
	slices.SortFunc(ls, func(x, y lt) int { return cmp.Compare(y.bits, x.bits) })
	ts := make([]table6, len(ls))
	for i, l := range ls {
		ts[i] = l.t
	}
	return ts
}

// mask64 returns a mask of the top bits bits of a 64-bit word, clamped to
// [0, 64].
func mask64(bits int) uint64 {
	switch {
	case bits <= 0:
		return 0
	case bits >= 64:
		return ^uint64(0)
	}
	return ^uint64(0) << (64 - bits)
}

// PeerStats is a peer with a reading of its counters, for status output and
// metrics.
type PeerStats struct {
	Peer
	TxPackets, TxBytes uint64
	RxPackets, RxBytes uint64
	// LastTx and LastRx are the times of the last send and receive; zero if
	// none yet. LastRx is the peer's last-seen time.
	LastTx, LastRx time.Time
}

// Stats returns every peer of the current snapshot with its counters,
// sorted by subnet.
func (t *Table) Stats() []PeerStats {
	s := t.Load()
	out := make([]PeerStats, 0, len(s.peers))
	for _, r := range s.peers {
		c := r.Counters
		out = append(out, PeerStats{
			Peer:      r.Peer,
			TxPackets: c.TxPackets.Load(), TxBytes: c.TxBytes.Load(),
			RxPackets: c.RxPackets.Load(), RxBytes: c.RxBytes.Load(),
			LastTx: unixNano(c.LastTx.Load()), LastRx: unixNano(c.LastRx.Load()),
		})
	}
	return out
}

func unixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
