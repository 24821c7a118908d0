package lease

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"overlay/lease/leasetest"
)

// peerView records the snapshots a Watch delivers.
type peerView struct {
	mu      sync.Mutex
	latest  []Lease
	calls   int
	everSaw map[string]bool // keys seen in any snapshot
}

func (v *peerView) update(peers []Lease) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.latest = peers
	v.calls++
	if v.everSaw == nil {
		v.everSaw = map[string]bool{}
	}
	for _, l := range peers {
		v.everSaw[l.Key] = true
	}
}

// subnets returns the IPv4 subnets of the latest snapshot.
func (v *peerView) subnets() map[netip.Prefix]Lease {
	v.mu.Lock()
	defer v.mu.Unlock()
	m := map[netip.Prefix]Lease{}
	for _, l := range v.latest {
		m[l.Subnet] = l
	}
	return m
}

func (v *peerView) is(want ...string) bool {
	got := v.subnets()
	if len(got) != len(want) {
		return false
	}
	for _, w := range want {
		if _, ok := got[pfx(w)]; !ok {
			return false
		}
	}
	return true
}

func (v *peerView) saw(key string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.everSaw[key]
}

// startWatch runs m.Watch until the test ends and waits for it to return.
func startWatch(t testing.TB, m *Manager, self netip.Addr) *peerView {
	t.Helper()
	v := &peerView{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Watch(ctx, self, v.update) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	return v
}

func putLease(t testing.TB, cli *clientv3.Client, name, value string, ttl int64) {
	t.Helper()
	var opts []clientv3.OpOption
	if ttl > 0 {
		g, err := cli.Grant(context.Background(), ttl)
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, clientv3.WithLease(g.ID))
	}
	if _, err := cli.Put(context.Background(), testPrefix+"/subnets/"+name, value, opts...); err != nil {
		t.Fatal(err)
	}
}

func peerValue(n int) string {
	a := netip.AddrFrom4([4]byte{172, 30, 250, byte(n)})
	l := Lease{PublicIP: a, BackendType: "vxlan", VNI: 1, VtepMAC: VtepMAC("test", a)}
	b, _ := encodeValue(&l)
	return string(b)
}

func TestWatchPeers(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, vxlanConfig)
	ctx := testCtx(t)
	// Before the watch: one peer, our own lease, a host-gw lease, junk.
	putLease(t, cli, "10.244.1.0-24", peerValue(1), 3600)
	putLease(t, cli, "10.244.9.0-24", peerValue(9), 3600) // self
	putLease(t, cli, "10.244.3.0-24", `{"PublicIP":"172.30.250.3","BackendType":"host-gw"}`, 0)
	putLease(t, cli, "10.244.4.0-24", `{"PublicIP":`, 0)
	putLease(t, cli, "not-a-subnet", peerValue(5), 0)
	putLease(t, cli, "10.244.6.0-24", `{"PublicIP":"172.30.250.6","BackendType":"vxlan"}`, 0) // no MAC yet
	rec := newRecorder(t)
	m := newManager(t, cli, Options{Logger: slogNew(rec)})
	v := startWatch(t, m, ip("172.30.250.9"))
	eventually(t, 10*time.Second, "the initial snapshot", func() bool { return v.is("10.244.1.0/24") })
	for _, key := range []string{"10.244.4.0-24", "not-a-subnet", "10.244.6.0-24"} {
		if rec.count("key="+testPrefix+"/subnets/"+key) == 0 {
			t.Errorf("no warning naming %s", key)
		}
	}
	if n := m.MalformedPeers(); n != 3 {
		t.Errorf("MalformedPeers = %d after the first listing, want 3 (junk JSON, bad key, no VtepMAC)", n)
	}
	got := v.subnets()[pfx("10.244.1.0/24")]
	if got.PublicIP != ip("172.30.250.1") || got.VtepMAC.String() != VtepMAC("test", ip("172.30.250.1")).String() {
		t.Errorf("peer %+v", got)
	}

	// Add, change, remove.
	putLease(t, cli, "10.244.2.0-24", peerValue(2), 3600)
	eventually(t, 10*time.Second, "peer 2 added", func() bool { return v.is("10.244.1.0/24", "10.244.2.0/24") })
	putLease(t, cli, "10.244.6.0-24", peerValue(6), 0) // the node wrote its MAC
	eventually(t, 10*time.Second, "peer 6 completed", func() bool { return v.is("10.244.1.0/24", "10.244.2.0/24", "10.244.6.0/24") })
	putLease(t, cli, "10.244.2.0-24", peerValue(22), 3600)
	eventually(t, 10*time.Second, "peer 2 moved", func() bool { return v.subnets()[pfx("10.244.2.0/24")].PublicIP == ip("172.30.250.22") })
	if _, err := cli.Delete(ctx, testPrefix+"/subnets/10.244.1.0-24"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "peer 1 removed", func() bool { return v.is("10.244.2.0/24", "10.244.6.0/24") })
	// A peer that turns malformed is removed; a host-gw write changes nothing.
	putLease(t, cli, "10.244.6.0-24", `{"PublicIP": 5}`, 0)
	eventually(t, 10*time.Second, "peer 6 dropped", func() bool { return v.is("10.244.2.0/24") })
	if n := m.MalformedPeers(); n != 4 {
		t.Errorf("MalformedPeers = %d after peer 6 turned malformed, want 4", n)
	}
	v.mu.Lock()
	calls := v.calls
	v.mu.Unlock()
	putLease(t, cli, "10.244.3.0-24", `{"PublicIP":"172.30.250.33","BackendType":"host-gw"}`, 0)
	putLease(t, cli, "10.244.7.0-24", peerValue(7), 0)
	eventually(t, 10*time.Second, "peer 7 added", func() bool { return v.is("10.244.2.0/24", "10.244.7.0/24") })
	v.mu.Lock()
	if v.calls != calls+1 {
		t.Errorf("%d snapshots for one peer change (a host-gw write caused a delivery?)", v.calls-calls)
	}
	v.mu.Unlock()
}
