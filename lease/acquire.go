package lease

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// AcquireOptions identify the node asking for a lease.
type AcquireOptions struct {
	// PublicIP is the node's IPv4 underlay address; required when the
	// config enables IPv4. A lease with this PublicIP is this node's.
	PublicIP netip.Addr
	// PublicIPv6 is the node's IPv6 underlay address; required when the
	// config enables IPv6.
	PublicIPv6 netip.Addr
	// VtepMAC is the node's VTEP MAC (see VtepMAC); required.
	VtepMAC net.HardwareAddr
	// Previous and PreviousIPv6 are the subnets recorded in subnet.env by
	// the previous run (host bits are ignored, so SubnetEnv.Subnet may be
	// passed as is). They are reclaimed when still free and valid.
	Previous, PreviousIPv6 netip.Prefix
}

func (o *AcquireOptions) check(cfg *Config) error {
	if cfg.EnableIPv4 && (!o.PublicIP.Is4() || o.PublicIP.IsUnspecified()) {
		return fmt.Errorf("acquire: public IPv4 address %v is not usable (the config enables IPv4)", o.PublicIP)
	}
	if cfg.EnableIPv6 && (!o.PublicIPv6.Is6() || o.PublicIPv6.Is4In6() || o.PublicIPv6.IsUnspecified()) {
		return fmt.Errorf("acquire: public IPv6 address %v is not usable (the config enables IPv6)", o.PublicIPv6)
	}
	if len(o.VtepMAC) != 6 || o.VtepMAC[0]&1 != 0 {
		return fmt.Errorf("acquire: VtepMAC %v is not a unicast Ethernet MAC", o.VtepMAC)
	}
	return nil
}

// mine reports whether l belongs to the node described by o: the same
// public address, as flannel decides it.
func (o *AcquireOptions) mine(l *Lease) bool {
	if o.PublicIP.IsValid() {
		return l.PublicIP == o.PublicIP
	}
	return o.PublicIPv6.IsValid() && l.PublicIPv6 == o.PublicIPv6
}

// errContention means the state changed under us; list again.
var errContention = errors.New("lease state changed concurrently")

// createTries bounds the create attempts made on one listing before
// listing again.
const createTries = 16

// Acquire returns a lease for the node, in this order of preference: an
// existing lease with the node's public IP (its value is refreshed with the
// current VtepMAC, its etcd lease renewed; a reservation is used as it is);
// the Previous subnet if it is free and valid for the config; a free subnet
// chosen at random in [SubnetMin, SubnetMax].
//
// A new key is created only if it does not exist (a Txn on Version == 0),
// bound to a new etcd lease of the configured TTL. Losing a creation race
// means trying another subnet. etcd errors are retried with capped backoff
// until ctx ends; a full network returns ErrNoFreeSubnet at once.
func (m *Manager) Acquire(ctx context.Context, o AcquireOptions) (*Lease, error) {
	cfg, err := m.Config(ctx)
	if err != nil {
		return nil, err
	}
	return m.acquire(ctx, cfg, o)
}

func (m *Manager) acquire(ctx context.Context, cfg *Config, o AcquireOptions) (*Lease, error) {
	if err := o.check(cfg); err != nil {
		return nil, err
	}
	a := &acquirer{m: m, cfg: cfg, o: o}
	l, err := a.run(ctx)
	// The etcd lease granted for a creation that did not happen would
	// otherwise live on, keyless, for a whole TTL.
	if a.grant != 0 && (l == nil || l.EtcdLease != a.grant) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if _, rerr := m.cli.Revoke(rctx, a.grant); rerr != nil && !errors.Is(rerr, rpctypes.ErrLeaseNotFound) {
			m.log.Warn("cannot revoke unused etcd lease; it expires by itself", "lease", fmt.Sprintf("%x", int64(a.grant)), "err", rerr)
		}
		cancel()
	}
	return l, err
}

// acquirer is the state of one Acquire call. Not safe for concurrent use.
type acquirer struct {
	m        *Manager
	cfg      *Config
	o        AcquireOptions
	grant    clientv3.LeaseID // granted for creating a key, reused across attempts
	grantTTL int64
}

func (a *acquirer) run(ctx context.Context) (*Lease, error) {
	bo := a.m.backoff()
	for {
		l, err := a.try(ctx)
		switch {
		case err == nil:
			return l, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.Is(err, errContention):
			continue
		case errors.Is(err, ErrNoFreeSubnet), isPermanent(err):
			return nil, err
		}
		a.m.log.Warn("acquiring a subnet lease failed, retrying", "err", err)
		if !bo.Wait(ctx) {
			return nil, ctx.Err()
		}
	}
}

func (a *acquirer) try(ctx context.Context) (*Lease, error) {
	m := a.m
	st, err := m.list(ctx)
	if err != nil {
		return nil, err
	}
	// Our own leases: the best valid one is reused, other expiring ones
	// (duplicates, or no longer valid for the config) are removed.
	var best *Lease
	for i := range st.leases {
		l := &st.leases[i]
		if !a.o.mine(l) {
			continue
		}
		if !a.fits(l) {
			if l.Reservation() {
				m.log.Warn("ignoring reservation for this node: it does not fit the network config", "key", l.Key)
			}
			continue
		}
		if best == nil || a.better(l, best) {
			best = l
		}
	}
	stale := 0
	for i := range st.leases {
		l := &st.leases[i]
		if !a.o.mine(l) || l == best || l.Reservation() {
			continue
		}
		m.log.Info("removing a stale lease of this node", "key", l.Key)
		if err := m.remove(ctx, l); err != nil {
			return nil, err
		}
		stale++
	}
	if stale > 0 {
		return nil, errContention
	}
	if best != nil {
		return a.reuse(ctx, best)
	}

	used := newUsedSet(st.used)
	dual := a.cfg.EnableIPv4 && a.cfg.EnableIPv6
	for try := 0; try < createTries; try++ {
		var sn4, sn6 netip.Prefix
		if a.cfg.EnableIPv4 {
			if sn4, err = a.pick(used, a.o.Previous, try, a.cfg.Contains, a.cfg.SubnetMin, a.cfg.SubnetMax, a.cfg.SubnetLen); err != nil {
				return nil, err
			}
		}
		if a.cfg.EnableIPv6 {
			if sn6, err = a.pick(used, a.o.PreviousIPv6, try, a.cfg.ContainsIPv6, a.cfg.IPv6SubnetMin, a.cfg.IPv6SubnetMax, a.cfg.IPv6SubnetLen); err != nil {
				return nil, err
			}
		}
		l, err := a.create(ctx, st.rev, sn4, sn6, dual)
		if err != nil || l != nil {
			return l, err
		}
		if dual {
			// The whole prefix is compared in dual stack; another
			// node's change means listing again.
			return nil, errContention
		}
		used.add(sn4)
		used.add(sn6)
	}
	return nil, errContention
}

// fits reports whether an own lease l is valid for the config. An expiring
// lease must lie in [SubnetMin, SubnetMax]; a reservation only inside the
// network, since operators reserve subnets outside the dynamic range.
func (a *acquirer) fits(l *Lease) bool {
	c := a.cfg
	check := func(enabled bool, sn, network netip.Prefix, bits int, in func(netip.Prefix) bool) bool {
		if !enabled {
			return !sn.IsValid()
		}
		if l.Reservation() {
			return sn.IsValid() && sn.Bits() == bits && network.Contains(sn.Addr())
		}
		return in(sn)
	}
	return check(c.EnableIPv4, l.Subnet, c.Network, c.SubnetLen, c.Contains) &&
		check(c.EnableIPv6, l.IPv6Subnet, c.IPv6Network, c.IPv6SubnetLen, c.ContainsIPv6)
}

// better orders own leases: a reservation, then the previous subnet, then
// the most recently written.
func (a *acquirer) better(l, than *Lease) bool {
	if l.Reservation() != than.Reservation() {
		return l.Reservation()
	}
	lp, tp := l.Subnet == a.o.Previous.Masked(), than.Subnet == a.o.Previous.Masked()
	if lp != tp {
		return lp
	}
	return l.ModRevision > than.ModRevision
}

// leaseFor returns this node's lease for the given subnets.
func (a *acquirer) leaseFor(sn4, sn6 netip.Prefix) Lease {
	l := Lease{
		Key:         a.m.subnets + SubnetKey(sn4, sn6),
		Subnet:      sn4,
		IPv6Subnet:  sn6,
		BackendType: BackendVXLAN,
		VNI:         a.cfg.Backend.VNI,
		VtepMAC:     a.o.VtepMAC,
	}
	if a.o.PublicIP.Is4() {
		l.PublicIP = a.o.PublicIP
	}
	if a.cfg.EnableIPv6 {
		l.PublicIPv6 = a.o.PublicIPv6
	}
	if sn6.IsValid() {
		l.IPv6VtepMAC = a.o.VtepMAC
	}
	return l
}

// reuse takes over an existing lease of this node: it renews its etcd lease
// (adopting it, whoever granted it) and rewrites the value if it differs.
func (a *acquirer) reuse(ctx context.Context, cur *Lease) (*Lease, error) {
	m := a.m
	want := a.leaseFor(cur.Subnet, cur.IPv6Subnet)
	want.Key = cur.Key
	want.EtcdLease = cur.EtcdLease
	if cur.EtcdLease != 0 {
		ka, err := m.cli.KeepAliveOnce(ctx, cur.EtcdLease)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return nil, errContention // the key is going away with it
		}
		if err != nil {
			return nil, fmt.Errorf("renew etcd lease of %s: %w", cur.Key, err)
		}
		want.Expiration = time.Now().Add(time.Duration(ka.TTL) * time.Second)
	}
	want.ModRevision = cur.ModRevision
	if !want.Equal(cur) {
		val, err := encodeValue(&want)
		if err != nil {
			return nil, err
		}
		var opts []clientv3.OpOption
		if cur.EtcdLease != 0 {
			opts = append(opts, clientv3.WithLease(cur.EtcdLease))
		}
		tr, err := m.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(cur.Key), "=", cur.ModRevision)).
			Then(clientv3.OpPut(cur.Key, string(val), opts...)).Commit()
		if err != nil {
			return nil, fmt.Errorf("update %s: %w", cur.Key, err)
		}
		if !tr.Succeeded {
			return nil, errContention
		}
		want.ModRevision = tr.Header.Revision
	}
	kind := "lease"
	if want.Reservation() {
		kind = "reservation"
	}
	m.log.Info("reusing this node's "+kind, "key", want.Key, "subnet", want.String())
	return &want, nil
}

// create writes a new lease for sn4/sn6 if its key does not exist. It
// returns nil, nil when it lost the race.
func (a *acquirer) create(ctx context.Context, rev int64, sn4, sn6 netip.Prefix, dual bool) (*Lease, error) {
	m := a.m
	if a.grant == 0 {
		g, err := m.cli.Grant(ctx, int64((m.ttl+time.Second-1)/time.Second))
		if err != nil {
			return nil, fmt.Errorf("grant etcd lease: %w", err)
		}
		a.grant, a.grantTTL = g.ID, g.TTL
	}
	l := a.leaseFor(sn4, sn6)
	l.EtcdLease = a.grant
	val, err := encodeValue(&l)
	if err != nil {
		return nil, err
	}
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.Version(l.Key), "=", 0)}
	if dual {
		// A dual-stack key names two subnets; another key may hold either
		// of them. Requiring that nothing below the prefix changed since
		// our listing makes the choice atomic.
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(m.subnets), "<", rev+1).WithPrefix())
	}
	tr, err := m.cli.Txn(ctx).If(cmps...).Then(clientv3.OpPut(l.Key, string(val), clientv3.WithLease(a.grant))).Commit()
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", l.Key, err)
	}
	if !tr.Succeeded {
		m.log.Debug("lost the race for a subnet, trying another", "key", l.Key)
		return nil, nil
	}
	l.ModRevision = tr.Header.Revision
	l.Expiration = time.Now().Add(time.Duration(a.grantTTL) * time.Second)
	m.log.Info("acquired a new lease", "key", l.Key, "subnet", l.String(), "ttl", time.Duration(a.grantTTL)*time.Second)
	return &l, nil
}

// pick returns the previous subnet if it is valid and free (first try
// only), else a free subnet at random in [lo, hi].
func (a *acquirer) pick(used *usedSet, prev netip.Prefix, try int, valid func(netip.Prefix) bool, lo, hi netip.Addr, bits int) (netip.Prefix, error) {
	if try == 0 && prev.IsValid() {
		p := prev.Masked()
		if valid(p) && !used.has(p) {
			return p, nil
		}
		if valid(p) {
			a.m.log.Info("previous subnet is taken, choosing another", "subnet", p)
		} else {
			a.m.log.Info("previous subnet does not fit the network config, choosing another", "subnet", p)
		}
	}
	count := subnetIndex(lo, hi, bits) + 1
	start := rand.Uint64N(count)
	// At most used.len() consecutive candidates can be taken, so this
	// finds a free subnet, if there is one, in used.len()+1 steps.
	limit := min(uint64(used.len())+1, count)
	for i := uint64(0); i < limit; i++ {
		p := netip.PrefixFrom(addSubnets(lo, bits, (start+i)%count), bits)
		if !used.has(p) {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: all %d subnets /%d from %s to %s are taken", ErrNoFreeSubnet, count, bits, lo, hi)
}

// remove deletes a lease of this node and revokes its etcd lease.
func (m *Manager) remove(ctx context.Context, l *Lease) error {
	tr, err := m.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(l.Key), "=", l.ModRevision)).
		Then(clientv3.OpDelete(l.Key)).Commit()
	if err != nil {
		return fmt.Errorf("delete %s: %w", l.Key, err)
	}
	if tr.Succeeded && l.EtcdLease != 0 {
		m.revoke(ctx, l.EtcdLease)
	}
	return nil
}

// revoke revokes an etcd lease we no longer use, best effort: a failure
// only means it lives until its TTL runs out.
func (m *Manager) revoke(ctx context.Context, id clientv3.LeaseID) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := m.cli.Revoke(rctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		m.log.Warn("cannot revoke etcd lease; it expires by itself", "lease", fmt.Sprintf("%x", int64(id)), "err", err)
	}
}

// usedSet answers "is this subnet occupied": exact matches by map, and
// prefixes of another length (left by an older config) by overlap.
type usedSet struct {
	exact map[netip.Prefix]struct{}
	all   []netip.Prefix
	lens  map[prefixLen]int // how many prefixes of each family and length
}

type prefixLen struct {
	is4  bool
	bits int
}

func newUsedSet(ps []netip.Prefix) *usedSet {
	u := &usedSet{exact: make(map[netip.Prefix]struct{}, len(ps)), lens: make(map[prefixLen]int)}
	for _, p := range ps {
		u.add(p)
	}
	return u
}

func (u *usedSet) add(p netip.Prefix) {
	if !p.IsValid() {
		return
	}
	if _, ok := u.exact[p]; ok {
		return
	}
	u.exact[p] = struct{}{}
	u.all = append(u.all, p)
	u.lens[prefixLen{p.Addr().Is4(), p.Bits()}]++
}

func (u *usedSet) len() int { return len(u.exact) }

func (u *usedSet) has(p netip.Prefix) bool {
	if _, ok := u.exact[p]; ok {
		return true
	}
	// Only a prefix of the same family and another length can overlap p
	// without being p; usually there is none and the map answers alone.
	odd := false
	for k := range u.lens {
		if k.is4 == p.Addr().Is4() && k.bits != p.Bits() {
			odd = true
			break
		}
	}
	if !odd {
		return false
	}
	for _, q := range u.all {
		if q.Bits() != p.Bits() && q.Overlaps(p) {
			return true
		}
	}
	return false
}
