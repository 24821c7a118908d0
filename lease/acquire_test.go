package lease

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"overlay/lease/leasetest"
)

const vxlanConfig = `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}`

func TestConfigWaitsForKey(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	rec := newRecorder(t)
	m := newManager(t, cli, Options{Logger: slogNew(rec)})
	ctx := testCtx(t)
	type result struct {
		cfg *Config
		err error
	}
	done := make(chan result, 1)
	go func() {
		cfg, err := m.Config(ctx)
		done <- result{cfg, err}
	}()
	eventually(t, 10*time.Second, "the waiting log line", func() bool {
		return rec.count("waiting for the network config key key="+testPrefix+"/config") == 1
	})
	select {
	case r := <-done:
		t.Fatalf("Config returned before the key existed: %+v", r)
	default:
	}
	putConfig(t, cli, vxlanConfig)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.cfg.Network != pfx("10.244.0.0/16") {
		t.Errorf("config %+v", r.cfg)
	}

	// An invalid config names the key, the field and the value.
	putConfig(t, cli, `{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}`)
	_, err := m.Config(ctx)
	for _, s := range []string{testPrefix + "/config", "Backend.Type", `"udp"`} {
		if err == nil || !contains(err.Error(), s) {
			t.Errorf("error %v does not mention %s", err, s)
		}
	}
	if _, err := m.SetConfig(ctx, []byte(`{"Network": "10.244.0.0/33"}`)); err == nil {
		t.Error("SetConfig accepted a bad config")
	}
	raw := `{"Network": "10.245.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": true}}`
	if _, err := m.SetConfig(ctx, []byte(raw)); err != nil {
		t.Fatal(err)
	}
	got, err := m.RawConfig(ctx)
	if err != nil || string(got) != raw {
		t.Errorf("RawConfig = %s, %v; want %s", got, err, raw)
	}
}

func TestAcquireConcurrent(t *testing.T) {
	srv := leasetest.NewServer(t)
	// A /18 holds 63 usable /24s: 50 agents collide often.
	putConfig(t, srv.Client(t), `{"Network": "10.244.0.0/18", "Backend": {"Type": "vxlan"}}`)
	clients := make([]*clientv3.Client, 5)
	for i := range clients {
		clients[i] = srv.Client(t)
	}
	ctx := testCtx(t)
	const agents = 50
	leases := make([]*Lease, agents)
	errs := make([]error, agents)
	var wg sync.WaitGroup
	for i := range agents {
		wg.Go(func() {
			m := newManager(t, clients[i%len(clients)], Options{})
			leases[i], errs[i] = m.Acquire(ctx, node(10+i))
		})
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range agents {
		if errs[i] != nil {
			t.Fatalf("agent %d: %v", i, errs[i])
		}
		if j, dup := seen[leases[i].Subnet.String()]; dup {
			t.Fatalf("agents %d and %d both got %v", i, j, leases[i].Subnet)
		}
		seen[leases[i].Subnet.String()] = i
		if leases[i].Subnet.Bits() != 24 || leases[i].Subnet == pfx("10.244.0.0/24") {
			t.Errorf("agent %d got %v", i, leases[i].Subnet)
		}
	}
	m := newManager(t, clients[0], Options{})
	all, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != agents {
		t.Errorf("%d leases in etcd, want %d", len(all), agents)
	}
	for _, l := range all {
		if l.Reservation() || time.Until(l.Expiration) < 23*time.Hour {
			t.Errorf("%s: expiration %v, want a 24 h lease", l.Key, l.Expiration)
		}
	}
	if n := etcdLeases(t, clients[0]); n != agents {
		t.Errorf("%d etcd leases, want %d: losers of creation races left orphans", n, agents)
	}
}

func TestAcquireExhaustion(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	// A /22 gives /24s 1..3: three nodes fit.
	putConfig(t, cli, `{"Network": "10.244.0.0/22", "Backend": {"Type": "vxlan"}}`)
	m := newManager(t, cli, Options{})
	ctx := testCtx(t)
	got := map[string]bool{}
	for i := range 3 {
		l, err := m.Acquire(ctx, node(10+i))
		if err != nil {
			t.Fatal(err)
		}
		got[l.Subnet.String()] = true
	}
	if len(got) != 3 || !got["10.244.1.0/24"] || !got["10.244.2.0/24"] || !got["10.244.3.0/24"] {
		t.Errorf("got %v", got)
	}
	_, err := m.Acquire(ctx, node(20))
	if !errors.Is(err, ErrNoFreeSubnet) {
		t.Fatalf("fourth node: %v, want ErrNoFreeSubnet", err)
	}
	if !contains(err.Error(), "10.244.1.0") || !contains(err.Error(), "10.244.3.0") {
		t.Errorf("error %q does not name the range", err)
	}
	if n := etcdLeases(t, cli); n != 3 {
		t.Errorf("%d etcd leases after a failed acquire, want 3", n)
	}
}

func TestAcquireRestartReusesLease(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, vxlanConfig)
	ctx := testCtx(t)
	first, err := newManager(t, cli, Options{}).Acquire(ctx, node(11))
	if err != nil {
		t.Fatal(err)
	}
	// The agent restarts (new manager, new client) with another MAC.
	o := node(11)
	o.VtepMAC = mac("02:11:22:33:44:55")
	second, err := newManager(t, srv.Client(t), Options{}).Acquire(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if second.Key != first.Key || second.EtcdLease != first.EtcdLease {
		t.Errorf("restart got %s (etcd lease %x), want %s (%x)", second.Key, second.EtcdLease, first.Key, first.EtcdLease)
	}
	v, _, _ := rawValue(t, cli, first.Key)
	want := `{"PublicIP":"172.30.250.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:11:22:33:44:55"}}`
	if v != want {
		t.Errorf("value %s, want %s", v, want)
	}
	// Unchanged attributes: the key is not rewritten.
	third, err := newManager(t, cli, Options{}).Acquire(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if third.ModRevision != second.ModRevision {
		t.Errorf("identical reuse rewrote the key (mod revision %d -> %d)", second.ModRevision, third.ModRevision)
	}
	if n := etcdLeases(t, cli); n != 1 {
		t.Errorf("%d etcd leases, want 1", n)
	}
}

func TestAcquireFromSubnetEnv(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, vxlanConfig)
	ctx := testCtx(t)
	m := newManager(t, cli, Options{})
	first, err := m.Acquire(ctx, node(11))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := m.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "subnet.env")
	if err := WriteSubnetEnv(path, NewSubnetEnv(cfg, first, 1450, false)); err != nil {
		t.Fatal(err)
	}
	// The lease is gone while the node is down (deleted by an operator).
	if err := m.Delete(ctx, first.Subnet); err != nil {
		t.Fatal(err)
	}
	if n := etcdLeases(t, cli); n != 0 {
		t.Errorf("Delete left %d etcd leases", n)
	}
	if err := m.Delete(ctx, first.Subnet); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
	env, err := ReadSubnetEnv(path)
	if err != nil {
		t.Fatal(err)
	}
	o := node(11)
	o.Previous = env.Subnet
	again, err := m.Acquire(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if again.Subnet != first.Subnet {
		t.Errorf("reacquired %v, want the previous %v", again.Subnet, first.Subnet)
	}
	// The previous subnet now held by another node: another one is chosen.
	o2 := node(12)
	o2.Previous = env.Subnet
	other, err := m.Acquire(ctx, o2)
	if err != nil {
		t.Fatal(err)
	}
	if other.Subnet == first.Subnet {
		t.Errorf("node 12 got node 11's subnet %v", other.Subnet)
	}
	// A previous subnet outside the config is ignored.
	o3 := node(13)
	o3.Previous = pfx("10.99.0.1/24")
	if l, err := m.Acquire(ctx, o3); err != nil || !cfg.Contains(l.Subnet) {
		t.Errorf("node 13: %v, %v", l, err)
	}
}

func TestAcquireReservations(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, `{"Network": "10.244.0.0/22", "Backend": {"Type": "vxlan"}}`)
	ctx := testCtx(t)
	// Reservations written by an operator, without a TTL: one for node 11,
	// one for a node that is not up.
	for k, v := range map[string]string{
		"10.244.2.0-24": `{"PublicIP":"172.30.250.11"}`,
		"10.244.3.0-24": `{"PublicIP":"172.30.250.99","BackendType":"vxlan"}`,
	} {
		if _, err := cli.Put(ctx, testPrefix+"/subnets/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
	m := newManager(t, cli, Options{})
	l, err := m.Acquire(ctx, node(11))
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != pfx("10.244.2.0/24") || !l.Reservation() || !l.Expiration.IsZero() {
		t.Errorf("node 11 got %+v, want its reservation", l)
	}
	v, leaseID, _ := rawValue(t, cli, l.Key)
	if leaseID != 0 {
		t.Errorf("reservation was bound to etcd lease %x", leaseID)
	}
	if want := fmt.Sprintf(`{"PublicIP":"172.30.250.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}`, node(11).VtepMAC); v != want {
		t.Errorf("reservation value %s, want %s", v, want)
	}
	// Node 12 gets the only free subnet, node 13 none: 10.244.3.0 is reserved.
	l12, err := m.Acquire(ctx, node(12))
	if err != nil || l12.Subnet != pfx("10.244.1.0/24") {
		t.Fatalf("node 12: %v, %v", l12, err)
	}
	if _, err := m.Acquire(ctx, node(13)); !errors.Is(err, ErrNoFreeSubnet) {
		t.Errorf("node 13: %v, want ErrNoFreeSubnet", err)
	}
}

func TestAcquireDualStack(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, `{"Network": "10.244.0.0/22", "EnableIPv6": true, "IPv6Network": "fc00::/62", "Backend": {"Type": "vxlan"}}`)
	ctx := testCtx(t)
	// Another node holds fc00:0:0:1::/64 under a key with another IPv4 subnet.
	if _, err := cli.Put(ctx, testPrefix+"/subnets/10.244.1.0-24&fc00:0:0:1::-64",
		`{"PublicIP":"172.30.250.99","PublicIPv6":"fd00::99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}`); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	leases := make([]*Lease, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() {
			o := node(11 + i)
			o.PublicIPv6 = ip(fmt.Sprintf("fd00::%d", 11+i))
			leases[i], errs[i] = newManager(t, srv.Client(t), Options{}).Acquire(ctx, o)
		})
	}
	wg.Wait()
	v4, v6 := map[string]bool{"10.244.1.0/24": true}, map[string]bool{"fc00:0:0:1::/64": true}
	for i, l := range leases {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if v4[l.Subnet.String()] || v6[l.IPv6Subnet.String()] {
			t.Errorf("node %d got %v + %v, which overlaps another lease", i, l.Subnet, l.IPv6Subnet)
		}
		v4[l.Subnet.String()], v6[l.IPv6Subnet.String()] = true, true
		if l.Key != testPrefix+"/subnets/"+SubnetKey(l.Subnet, l.IPv6Subnet) {
			t.Errorf("key %s", l.Key)
		}
	}
	o := node(13)
	o.PublicIPv6 = ip("fd00::13")
	if _, err := newManager(t, cli, Options{}).Acquire(ctx, o); !errors.Is(err, ErrNoFreeSubnet) {
		t.Errorf("third dual-stack node: %v, want ErrNoFreeSubnet (IPv6 has 3 usable /64s)", err)
	}
}

func TestFlannelLeaseInterop(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, vxlanConfig)
	ctx := testCtx(t)
	// A kernel flannel node's lease, byte for byte.
	flannelKey := testPrefix + "/subnets/10.244.62.0-24"
	g, err := cli.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, flannelKey, flannelValue, clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	m := newManager(t, cli, Options{})
	o := node(12)
	o.VtepMAC = mac("3a:2e:6c:5d:b4:d7")
	own, err := m.Acquire(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	v, _, _ := rawValue(t, cli, own.Key)
	want := `{"PublicIP":"172.30.250.12","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d7"}}`
	if v != want {
		t.Errorf("our value %s, want flannel's shape %s", v, want)
	}
	all, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 {
		t.Fatalf("List: %+v", all)
	}
	var fl *Lease
	for i := range all {
		if all[i].Key == flannelKey {
			fl = &all[i]
		}
	}
	if fl == nil || fl.PublicIP != ip("172.30.250.11") || fl.VtepMAC.String() != "3a:2e:6c:5d:b4:d6" || fl.VNI != 1 ||
		fl.Subnet != pfx("10.244.62.0/24") || fl.EtcdLease != g.ID || time.Until(fl.Expiration) < 50*time.Minute {
		t.Errorf("flannel lease read as %+v", fl)
	}
	// Ours re-encodes to flannel's exact shape.
	b, err := encodeValue(fl)
	if err != nil || string(b) != flannelValue {
		t.Errorf("re-encoded %s, %v", b, err)
	}
}

func TestAcquireValidatesOptions(t *testing.T) {
	srv := leasetest.NewServer(t)
	cli := srv.Client(t)
	putConfig(t, cli, vxlanConfig)
	m := newManager(t, cli, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, o := range []AcquireOptions{
		{VtepMAC: node(1).VtepMAC},
		{PublicIP: ip("fd00::1"), VtepMAC: node(1).VtepMAC},
		{PublicIP: ip("172.30.250.1")},
		{PublicIP: ip("172.30.250.1"), VtepMAC: mac("01:00:5e:00:00:01")},
	} {
		if _, err := m.Acquire(ctx, o); err == nil {
			t.Errorf("Acquire(%+v) succeeded", o)
		}
	}
	if _, err := New(cli, Options{TTL: time.Minute, RenewMargin: time.Hour}); err == nil {
		t.Error("New accepted a renew margin longer than the TTL")
	}
}
