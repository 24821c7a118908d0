package lease

import (
	"context"
	"errors"
	"net/netip"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Watch calls fn with the full set of peers whenever it changes, until ctx
// ends, and then returns nil. The first call comes after the first listing
// (possibly with an empty set). Peers are the vxlan leases below the prefix
// except the node's own: self is the node's public address, and a lease
// whose PublicIP or PublicIPv6 equals it is never a peer, whichever subnet
// the node holds at the moment. Leases of other backend types are ignored;
// malformed ones and vxlan leases without a VtepMAC are skipped with a
// warning naming the key.
//
// fn is called from Watch's goroutine, one call at a time; it owns the slice
// (sorted by subnet) and may keep it. fn should return quickly: events are
// not lost while it runs, but they wait.
//
// Watch lists again after any watch failure (compaction, leader loss, a
// closed stream), with capped backoff, and delivers the reconciled set only
// if it differs from the last one delivered. It returns an error only for
// authentication and permission failures.
func (m *Manager) Watch(ctx context.Context, self netip.Addr, fn func(peers []Lease)) error {
	w := &watcher{m: m, self: self, fn: fn}
	return w.run(ctx)
}

// watcher is the state of one Watch call, owned by its goroutine.
type watcher struct {
	m         *Manager
	self      netip.Addr
	fn        func([]Lease)
	peers     map[string]Lease // by key
	delivered bool
	// bad holds the ModRevision of each key last found malformed, so that
	// a record is counted once however often it is listed again.
	bad map[string]int64
}

func (w *watcher) run(ctx context.Context) error {
	m := w.m
	bo := m.backoff()
	for first := true; ; first = false {
		if !first && !bo.Wait(ctx) {
			return nil
		}
		rev, err := w.resync(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if isPermanent(err) {
				return err
			}
			m.log.Warn("cannot list peers, retrying", "prefix", m.subnets, "err", err)
			continue
		}
		healthy, err := w.watch(ctx, rev)
		if ctx.Err() != nil {
			return nil
		}
		if healthy {
			bo.Reset()
		}
		m.log.Info("peer watch interrupted, listing again", "prefix", m.subnets, "revision", rev, "err", err)
	}
}

// resync lists the prefix, replaces the peer set and delivers it if it
// changed. It returns the revision of the listing.
func (w *watcher) resync(ctx context.Context) (int64, error) {
	resp, err := w.m.cli.Get(ctx, w.m.subnets, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	next := make(map[string]Lease, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if l, ok := w.peer(kv); ok {
			next[l.Key] = l
		}
	}
	changed := !w.delivered || len(next) != len(w.peers)
	if !changed {
		for k, l := range next {
			if old, ok := w.peers[k]; !ok || !old.Equal(&l) {
				changed = true
				break
			}
		}
	}
	w.peers = next
	if changed {
		w.deliver()
	}
	return resp.Header.Revision, nil
}

// watch applies events from rev+1 until the watch fails. healthy reports
// whether at least one good response arrived.
func (w *watcher) watch(ctx context.Context, rev int64) (healthy bool, err error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := w.m.cli.Watch(wctx, w.m.subnets, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	defer func() {
		cancel()
		for range wch { // the channel closes once the watch is torn down
		}
	}()
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return healthy, err
		}
		healthy = true
		changed := false
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			old, had := w.peers[key]
			switch ev.Type {
			case mvccpb.DELETE:
				delete(w.bad, key)
				if had {
					delete(w.peers, key)
					changed = true
				}
			case mvccpb.PUT:
				l, ok := w.peer(ev.Kv)
				switch {
				case ok:
					if !had || !old.Equal(&l) {
						changed = true
					}
					w.peers[key] = l
				case had:
					delete(w.peers, key)
					changed = true
				}
			}
		}
		if changed {
			w.deliver()
		}
	}
	if ctx.Err() != nil {
		return healthy, ctx.Err()
	}
	return healthy, errors.New("watch channel closed")
}

// peer decodes kv and reports whether it is a usable peer.
func (w *watcher) peer(kv *mvccpb.KeyValue) (Lease, bool) {
	l, ok := w.m.decode(kv)
	if !ok {
		w.malformed(kv)
		return Lease{}, false
	}
	if l.BackendType != BackendVXLAN {
		return Lease{}, false
	}
	if w.self.IsValid() && (l.PublicIP == w.self || l.PublicIPv6 == w.self) {
		return Lease{}, false
	}
	if p := peerProblem(&l); p != "" {
		w.m.log.Warn("skipping vxlan lease that cannot be a peer", "key", l.Key, "err", p)
		w.malformed(kv)
		return Lease{}, false
	}
	return l, true
}

// malformed counts kv as a malformed peer, once per version of the key.
func (w *watcher) malformed(kv *mvccpb.KeyValue) {
	if w.bad == nil {
		w.bad = make(map[string]int64)
	}
	key := string(kv.Key)
	if rev, ok := w.bad[key]; ok && rev == kv.ModRevision {
		return
	}
	w.bad[key] = kv.ModRevision
	w.m.malformed.Add(1)
}

func (w *watcher) deliver() {
	s := make([]Lease, 0, len(w.peers))
	for _, l := range w.peers {
		s = append(s, l)
	}
	sortLeases(s)
	w.delivered = true
	w.fn(s)
}
