package lease

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"overlay/lease/leasetest"
)

const benchPeers = 1000

// seedLeases writes n vxlan leases 10.244.x.y/28 (a /16 split into /28s
// holds 4096), all bound to one etcd lease, in transactions of 100 puts.
func seedLeases(tb testing.TB, cli *clientv3.Client, n int) {
	tb.Helper()
	ctx := context.Background()
	putConfig(tb, cli, `{"Network": "10.244.0.0/16", "SubnetLen": 28, "Backend": {"Type": "vxlan"}}`)
	g, err := cli.Grant(ctx, 3600)
	if err != nil {
		tb.Fatal(err)
	}
	for i := 0; i < n; {
		var ops []clientv3.Op
		for ; i < n && len(ops) < 100; i++ {
			sn := netip.PrefixFrom(addSubnets(netip.MustParseAddr("10.244.0.0"), 28, uint64(i+1)), 28)
			pub := netip.AddrFrom4([4]byte{172, 30, byte(250 - i/250), byte(1 + i%250)})
			ops = append(ops, clientv3.OpPut(testPrefix+"/subnets/"+SubnetKey(sn, netip.Prefix{}), benchValue(pub, 0), clientv3.WithLease(g.ID)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			tb.Fatal(err)
		}
	}
}

func benchValue(pub netip.Addr, salt int) string {
	l := Lease{PublicIP: pub, BackendType: "vxlan", VNI: 1, VtepMAC: VtepMAC(fmt.Sprint(salt), pub)}
	b, _ := encodeValue(&l)
	return string(b)
}

// BenchmarkWatchStart measures what an agent joining a cluster of 1000
// nodes pays to list the leases and start watching: time to the first full
// snapshot, and the agent's allocations (etcd runs in a child process).
func BenchmarkWatchStart(b *testing.B) {
	url := startEtcdProcess(b)
	seed := leasetest.NewClient(b, []string{url}, nil)
	seedLeases(b, seed, benchPeers)
	cli := leasetest.NewClient(b, []string{url}, nil)
	m := newManager(b, cli, Options{})
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		ctx, cancel := context.WithCancel(context.Background())
		got := make(chan int, 1)
		done := make(chan error, 1)
		go func() {
			done <- m.Watch(ctx, netip.Addr{}, func(p []Lease) {
				select {
				case got <- len(p):
				default:
				}
			})
		}()
		if n := <-got; n != benchPeers {
			b.Fatalf("first snapshot has %d peers, want %d", n, benchPeers)
		}
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(benchPeers, "peers")
}

// BenchmarkPeerUpdate measures the delay from a lease write (one peer's
// VtepMAC changes) to the delivery of the snapshot of 1000 peers that
// contains it, through a real etcd watch.
func BenchmarkPeerUpdate(b *testing.B) {
	url := startEtcdProcess(b)
	writer := leasetest.NewClient(b, []string{url}, nil)
	seedLeases(b, writer, benchPeers)
	m := newManager(b, leasetest.NewClient(b, []string{url}, nil), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	updates := make(chan int, 1)
	done := make(chan error, 1)
	go func() {
		done <- m.Watch(ctx, netip.Addr{}, func(p []Lease) { updates <- len(p) })
	}()
	if n := <-updates; n != benchPeers {
		b.Fatalf("first snapshot has %d peers", n)
	}
	key := testPrefix + "/subnets/" + SubnetKey(pfx("10.244.0.16/28"), netip.Prefix{})
	pub := netip.AddrFrom4([4]byte{172, 30, 250, 1})
	var worst time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		i++
		start := time.Now()
		if _, err := writer.Put(ctx, key, benchValue(pub, i)); err != nil {
			b.Fatal(err)
		}
		if n := <-updates; n != benchPeers {
			b.Fatalf("snapshot has %d peers", n)
		}
		worst = max(worst, time.Since(start))
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/update")
	b.ReportMetric(float64(worst.Microseconds()), "max-µs/update")
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
