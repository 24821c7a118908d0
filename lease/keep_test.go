package lease

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"overlay/lease/leasetest"
)

// keptLease records what Keep reports.
type keptLease struct {
	mu      sync.Mutex
	cur     Lease
	changes int
}

func (k *keptLease) set(l Lease) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cur = l
	k.changes++
}

func (k *keptLease) get() (Lease, int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cur, k.changes
}

// startKeep runs m.Keep until the test ends and waits for it to return.
func startKeep(t testing.TB, m *Manager, l *Lease, o AcquireOptions) *keptLease {
	t.Helper()
	k := &keptLease{cur: *l}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Keep(ctx, l, o, k.set) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Keep: %v", err)
		}
	})
	return k
}

func TestKeepRenewsWithoutOrphans(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, vxlanConfig)
	ctx := testCtx(t)
	// A 3 s lease renewed 2 s before its end: a renewal every second.
	m := newManager(t, cli, Options{TTL: 3 * time.Second, RenewMargin: 2 * time.Second})
	l, err := m.Acquire(ctx, node(11))
	if err != nil {
		t.Fatal(err)
	}
	k := startKeep(t, m, l, node(11))
	eventually(t, 30*time.Second, "five renewals", func() bool { _, n := k.get(); return n >= 5 })
	// By now the original 3 s would long have run out.
	cur, _ := k.get()
	if cur.Key != l.Key || cur.EtcdLease != l.EtcdLease {
		t.Errorf("lease changed from %s/%x to %s/%x", l.Key, l.EtcdLease, cur.Key, cur.EtcdLease)
	}
	if _, leaseID, ok := rawValue(t, cli, l.Key); !ok || clientv3.LeaseID(leaseID) != l.EtcdLease {
		t.Errorf("key present %v, bound to %x", ok, leaseID)
	}
	if n := etcdLeases(t, cli); n != 1 {
		t.Errorf("%d etcd leases after renewals, want 1", n)
	}
}

func TestKeepReacquiresDeletedLease(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, vxlanConfig)
	ctx := testCtx(t)
	rec := newRecorder(t)
	m := newManager(t, cli, Options{Logger: slogNew(rec)})
	l, err := m.Acquire(ctx, node(11))
	if err != nil {
		t.Fatal(err)
	}
	k := startKeep(t, m, l, node(11))
	other := newManager(t, srv.Client(t), Options{})
	v := startWatch(t, other, ip("172.30.250.12"))
	eventually(t, 10*time.Second, "peer 11 seen", func() bool { return v.is(l.Subnet.String()) })

	// overlay leases delete: key deleted and etcd lease revoked.
	if err := other.Delete(ctx, l.Subnet); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "re-acquisition", func() bool {
		cur, n := k.get()
		return n >= 1 && cur.EtcdLease != l.EtcdLease
	})
	cur, _ := k.get()
	if cur.Subnet != l.Subnet {
		t.Errorf("re-acquired %v, want the same subnet %v", cur.Subnet, l.Subnet)
	}
	eventually(t, 10*time.Second, "peer 11 back", func() bool {
		p, ok := v.subnets()[l.Subnet]
		return ok && p.ModRevision == cur.ModRevision
	})

	// etcdctl del: the key goes, its etcd lease stays; Keep revokes it.
	if _, err := cli.Delete(ctx, cur.Key); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "second re-acquisition", func() bool {
		c, _ := k.get()
		return c.EtcdLease != cur.EtcdLease
	})
	eventually(t, 10*time.Second, "a single etcd lease", func() bool { return etcdLeases(t, cli) == 1 })
	if n := rec.count("lease deleted"); n != 2 {
		t.Errorf("%d 'lease deleted' logs, want 2", n)
	}
}

func TestLeaseExpiryRemovesPeer(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, vxlanConfig)
	ctx := testCtx(t)
	// A node that acquires a short lease and dies (no Keep).
	short := newManager(t, cli, Options{TTL: 2 * time.Second, RenewMargin: time.Second})
	dead, err := short.Acquire(ctx, node(11))
	if err != nil {
		t.Fatal(err)
	}
	alive, err := short.Acquire(ctx, node(12))
	if err != nil {
		t.Fatal(err)
	}
	startKeep(t, short, alive, node(12))
	v := startWatch(t, newManager(t, srv.Client(t), Options{}), ip("172.30.250.13"))
	eventually(t, 10*time.Second, "both peers", func() bool { return v.is(dead.Subnet.String(), alive.Subnet.String()) })
	eventually(t, 30*time.Second, "the dead node's lease to expire", func() bool { return v.is(alive.Subnet.String()) })
}

// TestPartitionAndCompaction cuts one node off etcd through a proxy while
// the cluster changes: its lease is deleted, peers come and go, history is
// compacted. When the node is let back in, its watch must report exactly
// the current peers (none lost, none that came and went in between), and
// its keeper must take its subnet back.
func TestPartitionAndCompaction(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, vxlanConfig)
	ctx := testCtx(t)
	direct := newManager(t, cli, Options{})
	for n := 1; n <= 3; n++ {
		putLease(t, cli, fmt.Sprintf("10.244.%d.0-24", n), peerValue(n), 3600)
	}

	proxy := leasetest.NewProxy(t, srv.ClientURL()[len("http://"):])
	pcli := leasetest.NewClient(t, []string{"http://" + proxy.Addr()}, nil)
	rec := newRecorder(t)
	m := newManager(t, pcli, Options{Logger: slogNew(rec)})
	o := node(11)
	l, err := m.Acquire(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	k := startKeep(t, m, l, o)
	v := startWatch(t, m, o.PublicIP)
	eventually(t, 10*time.Second, "the first peers", func() bool { return v.is("10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24") })

	proxy.Cut()
	if err := direct.Delete(ctx, l.Subnet); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, testPrefix+"/subnets/10.244.2.0-24"); err != nil {
		t.Fatal(err)
	}
	putLease(t, cli, "10.244.4.0-24", peerValue(4), 3600)
	putLease(t, cli, "10.244.5.0-24", peerValue(5), 3600) // a phantom: comes and goes
	if _, err := cli.Delete(ctx, testPrefix+"/subnets/10.244.5.0-24"); err != nil {
		t.Fatal(err)
	}
	putLease(t, cli, "10.244.3.0-24", peerValue(33), 3600) // moved
	resp, err := cli.Get(ctx, "compact-me")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the partition lasts a while
	proxy.Restore()

	eventually(t, 60*time.Second, "the peers after the partition", func() bool {
		return v.is("10.244.1.0/24", "10.244.3.0/24", "10.244.4.0/24") &&
			v.subnets()[pfx("10.244.3.0/24")].PublicIP == ip("172.30.250.33")
	})
	if v.saw(testPrefix + "/subnets/10.244.5.0-24") {
		t.Error("a peer that came and went during the partition was delivered")
	}
	if rec.count("peer watch interrupted") == 0 {
		t.Error("the watch never resynchronised after the compaction")
	}
	eventually(t, 60*time.Second, "the same subnet taken back", func() bool {
		cur, n := k.get()
		_, _, ok := rawValue(t, cli, l.Key)
		return n >= 1 && cur.Subnet == l.Subnet && ok
	})
	// The old etcd lease is gone (revoked by Delete), the new one lives.
	cur, _ := k.get()
	for id, alive := range map[clientv3.LeaseID]bool{l.EtcdLease: false, cur.EtcdLease: true} {
		ttl, err := cli.TimeToLive(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if (ttl.TTL > 0) != alive {
			t.Errorf("etcd lease %x: TTL %d, want alive %v", id, ttl.TTL, alive)
		}
	}
}

// TestEtcdOutage stops etcd for 10 s and restarts it on the same data
// directory and ports: the lease survives, and the watcher catches up with
// every change made right after the restart.
func TestEtcdOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("10 s outage")
	}
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, vxlanConfig)
	ctx := testCtx(t)
	putLease(t, cli, "10.244.1.0-24", peerValue(1), 3600)
	putLease(t, cli, "10.244.2.0-24", peerValue(2), 3600)
	rec := newRecorder(t)
	m := newManager(t, srv.Client(t), Options{Logger: slogNew(rec)})
	o := node(11)
	l, err := m.Acquire(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	k := startKeep(t, m, l, o)
	v := startWatch(t, m, o.PublicIP)
	eventually(t, 10*time.Second, "the first peers", func() bool { return v.is("10.244.1.0/24", "10.244.2.0/24") })

	srv.Stop()
	time.Sleep(10 * time.Second)
	srv.Restart()
	// Changes made as soon as etcd is back, before the agent reconnects.
	cli2 := srv.Client(t)
	if _, err := cli2.Delete(ctx, testPrefix+"/subnets/10.244.1.0-24"); err != nil {
		t.Fatal(err)
	}
	putLease(t, cli2, "10.244.3.0-24", peerValue(3), 3600)
	eventually(t, 60*time.Second, "the peers after the outage", func() bool { return v.is("10.244.2.0/24", "10.244.3.0/24") })
	// A change after reconnection arrives too.
	putLease(t, cli2, "10.244.4.0-24", peerValue(4), 3600)
	eventually(t, 30*time.Second, "a new peer", func() bool { return v.is("10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24") })
	cur, _ := k.get()
	if _, leaseID, ok := rawValue(t, cli2, l.Key); !ok || clientv3.LeaseID(leaseID) != l.EtcdLease || cur.Key != l.Key {
		t.Errorf("lease after outage: present %v, etcd lease %x (want %x), keeper holds %s", ok, leaseID, l.EtcdLease, cur.Key)
	}
	if v.saw(testPrefix+"/subnets/10.244.1.0-24") && v.is("10.244.1.0/24") {
		t.Error("deleted peer still present")
	}
}

func TestOwnLeaseNeverAPeer(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48", "Backend": {"Type": "vxlan"}}`)
	ctx := testCtx(t)
	m := newManager(t, cli, Options{})
	var ls []*Lease
	for n := 11; n <= 12; n++ {
		o := node(n)
		o.PublicIPv6 = netip.MustParseAddr(fmt.Sprintf("fd00::%d", n))
		l, err := m.Acquire(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	v := startWatch(t, m, ip("172.30.250.11"))
	eventually(t, 10*time.Second, "one dual-stack peer", func() bool {
		p, ok := v.subnets()[ls[1].Subnet]
		return len(v.subnets()) == 1 && ok && p.IPv6Subnet == ls[1].IPv6Subnet && p.IPv6VtepMAC != nil
	})
}
