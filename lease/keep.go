package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"overlay/lease/internal/retry"
)

// rpcTimeout bounds one etcd call made by Keep, so that a dead connection
// turns into a retry instead of a hang.
const rpcTimeout = 10 * time.Second

// Keep holds the node's lease l (as returned by Acquire with o) until ctx
// ends, then returns nil. It renews the etcd lease RenewMargin before it
// ends, watches the key, and when the lease is deleted, expires or is taken
// over, it revokes the old etcd lease and acquires again with o, preferring
// the same subnet. etcd failures are retried with capped backoff; after
// each, the key is checked again. Keep returns early only on authentication
// or permission errors.
//
// onChange (may be nil) is called from Keep's goroutine with the current
// lease after every renewal and every re-acquisition; compare its Subnet and
// IPv6Subnet with the previous ones to know whether the node must be
// reconfigured.
func (m *Manager) Keep(ctx context.Context, l *Lease, o AcquireOptions, onChange func(Lease)) error {
	if onChange == nil {
		onChange = func(Lease) {}
	}
	k := &keeper{m: m, o: o, cur: *l, onChange: onChange}
	return k.run(ctx)
}

// keeper is the state of one Keep call, owned by its goroutine.
type keeper struct {
	m        *Manager
	o        AcquireOptions
	cur      Lease
	onChange func(Lease)
}

func (k *keeper) run(ctx context.Context) error {
	m := k.m
	bo := m.backoff()
	for {
		lost, err := k.hold(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && isPermanent(err) {
			return fmt.Errorf("keep lease %s: %w", k.cur.Key, err)
		}
		if !lost {
			m.log.Info("lease watch interrupted, checking the lease", "key", k.cur.Key, "err", err)
			lost, err = k.verify(ctx)
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				if isPermanent(err) {
					return fmt.Errorf("keep lease %s: %w", k.cur.Key, err)
				}
				m.log.Warn("cannot check the lease, retrying", "key", k.cur.Key, "err", err)
				if !bo.Wait(ctx) {
					return nil
				}
				continue
			}
			bo.Reset()
		}
		if lost {
			if err := k.reacquire(ctx); err != nil {
				return err
			}
		}
	}
}

// hold watches the key and renews the lease until the lease is lost
// (lost == true), the watch fails (err != nil) or ctx ends.
func (k *keeper) hold(ctx context.Context) (lost bool, err error) {
	m := k.m
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := m.cli.Watch(wctx, k.cur.Key, clientv3.WithRev(k.cur.ModRevision+1))
	defer func() {
		cancel()
		for range wch {
		}
	}()

	var timerC <-chan time.Time
	var timer *time.Timer
	if !k.cur.Reservation() {
		// The first renewal is due RenewMargin before expiry, or now.
		timer = time.NewTimer(max(time.Until(k.cur.Expiration)-m.margin, 0))
		defer timer.Stop()
		timerC = timer.C
	}
	renewBo := m.backoff()
	for {
		select {
		case <-ctx.Done():
			return false, nil
		case <-timerC:
			exp, err := k.renew(ctx)
			switch {
			case err == nil:
				renewBo.Reset()
				k.cur.Expiration = exp
				left := time.Until(exp)
				// An adopted etcd lease may be shorter than the margin;
				// never renew more often than three times per TTL.
				timer.Reset(max(left-m.margin, left/3))
				k.onChange(k.cur)
			case errors.Is(err, rpctypes.ErrLeaseNotFound):
				m.log.Warn("lease expired", "key", k.cur.Key)
				return true, nil
			case isPermanent(err):
				return false, err
			default:
				d := renewBo.Next()
				m.log.Warn("cannot renew the lease, retrying", "key", k.cur.Key, "in", d, "expires", k.cur.Expiration, "err", err)
				timer.Reset(d)
			}
		case resp, ok := <-wch:
			if !ok {
				return false, errors.New("watch channel closed")
			}
			if err := resp.Err(); err != nil {
				return false, err
			}
			for _, ev := range resp.Events {
				if ev.Type == mvccpb.DELETE {
					m.log.Warn("lease deleted", "key", k.cur.Key, "revision", ev.Kv.ModRevision)
					return true, nil
				}
				l, ok := m.decode(ev.Kv)
				if !ok || !k.o.mine(&l) {
					m.log.Warn("lease overwritten by another writer", "key", k.cur.Key, "value", string(ev.Kv.Value))
					return true, nil
				}
				k.cur.ModRevision = ev.Kv.ModRevision
				k.cur.EtcdLease = clientv3.LeaseID(ev.Kv.Lease)
			}
		}
	}
}

// renew extends the etcd lease with one keep-alive and returns the new
// expiry. The key is not rewritten (see the package notes).
func (k *keeper) renew(ctx context.Context) (time.Time, error) {
	rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := k.m.cli.KeepAliveOnce(rctx, k.cur.EtcdLease)
	if err != nil {
		return time.Time{}, err
	}
	k.m.log.Debug("renewed lease", "key", k.cur.Key, "ttl", resp.TTL)
	return time.Now().Add(time.Duration(resp.TTL) * time.Second), nil
}

// verify reads the key after a watch failure: lost reports that it is gone
// or no longer ours. A lease still ours is renewed at once, which both
// learns its expiry and makes up for renewals missed during an outage.
func (k *keeper) verify(ctx context.Context) (lost bool, err error) {
	m := k.m
	rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	resp, err := m.cli.Get(rctx, k.cur.Key)
	cancel()
	if err != nil {
		return false, err
	}
	if len(resp.Kvs) == 0 {
		m.log.Warn("lease is gone", "key", k.cur.Key)
		return true, nil
	}
	l, ok := m.decode(resp.Kvs[0])
	if !ok || !k.o.mine(&l) {
		m.log.Warn("lease overwritten by another writer", "key", k.cur.Key)
		return true, nil
	}
	k.cur.ModRevision, k.cur.EtcdLease = l.ModRevision, l.EtcdLease
	if k.cur.Reservation() {
		k.cur.Expiration = time.Time{}
		return false, nil
	}
	exp, err := k.renew(ctx)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	k.cur.Expiration = exp
	return false, nil
}

// reacquire replaces a lost lease, preferring the same subnets, retrying
// until it succeeds or ctx ends (then it returns nil).
func (k *keeper) reacquire(ctx context.Context) error {
	m := k.m
	old := k.cur
	if !old.Reservation() {
		// Whatever removed the key may have left its etcd lease.
		m.revoke(ctx, old.EtcdLease)
	}
	o := k.o
	o.Previous, o.PreviousIPv6 = old.Subnet, old.IPv6Subnet
	bo := m.backoff()
	for {
		cfg, err := m.Config(ctx)
		var l *Lease
		if err == nil {
			l, err = m.acquire(ctx, cfg, o)
		}
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			if l.Subnet != old.Subnet || l.IPv6Subnet != old.IPv6Subnet {
				m.log.Warn("lease re-acquired with another subnet; the node must be reconfigured", "old", old.Key, "new", l.Key)
			} else {
				m.log.Info("lease re-acquired", "key", l.Key)
			}
			k.cur = *l
			k.onChange(k.cur)
			return nil
		}
		if isPermanent(err) {
			return fmt.Errorf("re-acquire lease: %w", err)
		}
		d := bo.Next()
		m.log.Warn("cannot re-acquire a lease, retrying", "previous", old.Key, "in", d, "err", err)
		if !retry.Sleep(ctx, d) {
			return nil
		}
	}
}
