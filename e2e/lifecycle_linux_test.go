package e2e

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"overlay/e2e/cluster"
)

// TestNodeJoinAndLeave (issue #6, 2): a fourth node joining later is
// reachable from every pod within 2 s of its agent being ready; deleting
// its lease with `overlay leases delete` and stopping it removes it from
// the other agents' peer tables.
func TestNodeJoinAndLeave(t *testing.T) {
	requireAgent(t)
	if !hasCommand("leases") {
		t.Fatal("the overlay binary has `up` but no `leases` command; this test deletes the lease as an operator would")
	}
	c := newCluster(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	nodes := addNodes(t, ctx, c, cluster.Agent, cluster.Agent, cluster.Agent)
	pingAll(t, ctx, c.Pods(), 20*time.Second)
	old := c.Pods()

	n4 := addNodes(t, ctx, c, cluster.Agent)[0]
	ready := n4.ReadyAt()
	target := n4.Pods[0]
	// Every existing pod pings the new node's pod until it answers; the
	// time that took, from the agent's readiness, is the join latency.
	lat := make([]time.Duration, len(old))
	errs := make([]error, len(old))
	var wg sync.WaitGroup
	for i, p := range old {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = pingUntil(ctx, p, target.Addr, 10*time.Second, cluster.PingOptions{Count: 1, Wait: 250 * time.Millisecond})
			lat[i] = time.Since(ready)
		}()
	}
	wg.Wait()
	for i, p := range old {
		switch {
		case errs[i] != nil:
			t.Errorf("new node's pod unreachable: %v", errs[i])
		case lat[i] > 2*time.Second:
			t.Errorf("%s reached %s %v after its agent was ready; want within 2 s", p, target, lat[i].Round(time.Millisecond))
		default:
			t.Logf("%s reached %s %v after its agent was ready", p, target, lat[i].Round(time.Millisecond))
		}
	}
	for _, n := range nodes {
		st, err := n.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p, ok := st.Peer(n4.Subnet())
		if !ok || p.VtepMAC != n4.VtepMAC().String() {
			t.Errorf("%s peer table lacks %s (%v %v): %+v", n.Name, n4.Name, n4.Subnet(), n4.VtepMAC(), st.Peers)
		}
	}

	// The node leaves: stopped, then its lease deleted by the operator.
	if err := n4.Stop(ctx); err != nil {
		t.Fatalf("stop %s: %v", n4.Name, err)
	}
	if out, err := c.CLI(ctx, "leases", "delete", n4.Subnet().String()); err != nil {
		t.Fatalf("overlay leases delete: %v", err)
	} else {
		t.Logf("overlay leases delete %v: %s", n4.Subnet(), out)
	}
	if _, err := c.Lease(ctx, n4.Subnet()); err == nil {
		t.Fatalf("lease of %v still in etcd after `overlay leases delete`", n4.Subnet())
	}
	for _, n := range nodes {
		waitFor(t, ctx, 10*time.Second, n.Name+" dropping "+n4.Name+" from its peers", func() bool {
			st, err := n.Status(ctx)
			if err != nil {
				return false
			}
			_, ok := st.Peer(n4.Subnet())
			return !ok && len(st.Peers) == len(nodes)-1
		})
	}
	// The remaining nodes still carry traffic.
	pingAll(t, ctx, old, 20*time.Second)
}

// TestAgentRestart (issue #6, 3): an agent restarted (cleanly, then after a
// crash) gets the same subnet back, and pod traffic resumes.
func TestAgentRestart(t *testing.T) {
	requireAgent(t)
	c := newCluster(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	nodes := addNodes(t, ctx, c, cluster.Agent, cluster.Agent)
	n1, n2 := nodes[0], nodes[1]
	pingAll(t, ctx, c.Pods(), 20*time.Second)
	sub, mac := n1.Subnet(), n1.VtepMAC()
	env, err := os.ReadFile(n1.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}

	for _, how := range []string{"SIGTERM", "SIGKILL"} {
		t.Logf("restarting %s after %s", n1.Name, how)
		if how == "SIGTERM" {
			if err := n1.Stop(ctx); err != nil {
				t.Fatalf("stop: %v", err)
			}
			// A clean stop keeps the lease and subnet.env.
			if _, err := c.Lease(ctx, sub); err != nil {
				t.Errorf("lease after SIGTERM: %v", err)
			}
			if after, err := os.ReadFile(n1.SubnetFile); err != nil || string(after) != string(env) {
				t.Errorf("subnet.env after SIGTERM: %q, %v; want %q", after, err, env)
			}
		} else {
			n1.Kill()
		}
		if err := n1.Start(ctx); err != nil {
			t.Fatalf("start after %s: %v", how, err)
		}
		if n1.Subnet() != sub {
			t.Fatalf("after %s the agent got subnet %v, want its old %v", how, n1.Subnet(), sub)
		}
		if n1.VtepMAC().String() != mac.String() {
			t.Logf("after %s the VtepMAC changed from %v to %v (allowed; peers follow the lease)", how, mac, n1.VtepMAC())
		}
		leases, err := c.Leases(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(leases) != 2 {
			t.Errorf("after %s: %d leases, want 2: %+v", how, len(leases), leases)
		}
		for _, pair := range [][2]*cluster.Pod{{n1.Pods[0], n2.Pods[0]}, {n2.Pods[1], n1.Pods[1]}} {
			if _, err := pingUntil(ctx, pair[0], pair[1].Addr, 15*time.Second, cluster.PingOptions{Count: 3}); err != nil {
				t.Errorf("after %s: %v", how, err)
			}
		}
		if _, err := cluster.Transfer(ctx, n2.Pods[0], n1.Pods[0], 8<<20, cluster.TransferOptions{}); err != nil {
			t.Errorf("transfer after %s: %v", how, err)
		}
	}
}

// TestEtcdOutage (issue #6, 4): etcd stopped for 15 s while a lease
// renewal falls due; pod traffic between existing nodes keeps flowing, the
// agents keep running, and once etcd is back the renewal happens and a new
// node joins.
func TestEtcdOutage(t *testing.T) {
	requireAgent(t)
	// The longest renew margin flanneld's flag allows makes a renewal fall
	// due one minute after the lease is created, so the outage can cover
	// it.
	c := newCluster(t, cluster.Options{AgentArgs: []string{"--subnet-lease-renew-margin=1439"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	nodes := addNodes(t, ctx, c, cluster.Agent, cluster.Agent)
	n1, n2 := nodes[0], nodes[1]
	pingAll(t, ctx, c.Pods(), 20*time.Second)

	const margin = 1439 * time.Minute
	const outage = 15 * time.Second
	dueIn := func(n *cluster.Node) (time.Duration, error) {
		l, err := c.Lease(ctx, n.Subnet())
		if err != nil {
			return 0, err
		}
		ttl, err := c.Etcd().TimeToLive(ctx, clientv3LeaseID(l.EtcdLease))
		if err != nil {
			return 0, err
		}
		return time.Duration(ttl.TTL)*time.Second - margin, nil
	}
	due, err := dueIn(n1)
	if err != nil {
		t.Fatal(err)
	}
	// Stop etcd a few seconds before n1's renewal is due.
	if wait := due - 5*time.Second; wait > 0 {
		t.Logf("waiting %v so that n1's lease renewal (due in %v) falls inside the outage", wait.Round(time.Second), due.Round(time.Second))
		time.Sleep(wait)
	}
	oldLease, err := c.Lease(ctx, n1.Subnet())
	if err != nil {
		t.Fatal(err)
	}

	if err := c.StopEtcd(ctx); err != nil {
		t.Fatalf("stop etcd: %v", err)
	}
	stopped := time.Now()
	t.Logf("etcd stopped for %v", outage)
	rounds, failed := 0, 0
	for time.Since(stopped) < outage {
		for _, pair := range [][2]*cluster.Pod{{n1.Pods[0], n2.Pods[0]}, {n2.Pods[1], n1.Pods[1]}} {
			r, err := pair[0].Ping(ctx, pair[1].Addr, cluster.PingOptions{Count: 3, Interval: 100 * time.Millisecond})
			rounds++
			if err != nil || !r.OK() {
				failed++
				t.Errorf("during the etcd outage %s -> %s: %v\n%s", pair[0], pair[1], err, r.Output)
			}
		}
	}
	if r, err := cluster.Transfer(ctx, n1.Pods[1], n2.Pods[0], 8<<20, cluster.TransferOptions{}); err != nil {
		t.Errorf("transfer during the etcd outage: %v", err)
	} else {
		t.Logf("transfer during the outage: %d bytes, %.0f Mbit/s", r.Bytes, r.Mbps())
	}
	for _, n := range nodes {
		if !n.Running() {
			t.Errorf("%s's agent exited during the etcd outage:\n%s", n.Name, n.LogTail(30))
		}
	}
	t.Logf("%d ping rounds during the outage, %d failed", rounds, failed)

	if err := c.StartEtcd(ctx); err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	// The renewal that fell due during the outage happens now: the lease's
	// remaining TTL goes back above the renew margin.
	waitFor(t, ctx, 60*time.Second, "n1's lease renewal after etcd returned", func() bool {
		d, err := dueIn(n1)
		return err == nil && d > 30*time.Second
	})
	newLease, err := c.Lease(ctx, n1.Subnet())
	if err != nil {
		t.Fatal(err)
	}
	if string(newLease.Value) != string(oldLease.Value) {
		t.Errorf("renewal changed the lease value:\n  before %s\n  after  %s", oldLease.Value, newLease.Value)
	}
	if newLease.EtcdLease != oldLease.EtcdLease {
		// A renewal by a new etcd lease must not leave the old one behind.
		if ttl, err := c.Etcd().TimeToLive(ctx, clientv3LeaseID(oldLease.EtcdLease)); err == nil && ttl.TTL > 0 {
			t.Errorf("renewal left the old etcd lease %x alive (TTL %d s)", oldLease.EtcdLease, ttl.TTL)
		}
	}
	n3 := addNodes(t, ctx, c, cluster.Agent)[0]
	t.Logf("%s joined after the outage with subnet %v", n3.Name, n3.Subnet())
	pingAll(t, ctx, c.Pods(), 20*time.Second)
}

// TestMixedCluster (issue #6, 5): a node running no overlay at all (the
// kernel flannel emulation) between two overlay nodes; pods behind each
// reach each other in both directions, and TCP transfers cross both ways.
func TestMixedCluster(t *testing.T) {
	requireAgent(t)
	c := newCluster(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	nodes := addNodes(t, ctx, c, cluster.Agent, cluster.KernelFlannel, cluster.Agent)
	a1, k, a2 := nodes[0], nodes[1], nodes[2]
	pingAll(t, ctx, c.Pods(), 20*time.Second)

	// The kernel node holds both agents as ordinary vxlan peers, and both
	// agents hold the kernel node.
	checkKernelPeer(t, k, a1, true)
	checkKernelPeer(t, k, a2, true)
	for _, a := range []*cluster.Node{a1, a2} {
		st, err := a.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p, ok := st.Peer(k.Subnet())
		if !ok || p.VtepMAC != k.VtepMAC().String() || p.Endpoint == "" {
			t.Errorf("%s peer table lacks the kernel node %v %v: %+v", a.Name, k.Subnet(), k.VtepMAC(), st.Peers)
		}
	}
	transferPairs(t, ctx, "", [2]*cluster.Pod{a1.Pods[0], k.Pods[0]}, [2]*cluster.Pod{k.Pods[1], a2.Pods[1]})
}

// TestMTU (issue #6, 6): with a 1500-byte underlay the overlay MTU is 1450:
// a 1450-byte ICMP packet with DF crosses, a 1451-byte one gets
// "fragmentation needed" with mtu 1450, and a TCP transfer with large
// writes completes.
func TestMTU(t *testing.T) {
	requireAgent(t)
	c := newCluster(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes := addNodes(t, ctx, c, cluster.Agent, cluster.Agent)
	n1, n2 := nodes[0], nodes[1]
	for _, n := range nodes {
		if n.MTU() != 1450 {
			t.Errorf("%s FLANNEL_MTU %d, want 1450", n.Name, n.MTU())
		}
		out, err := n.NS.Run(ctx, "ip", "-o", "link", "show", n.TUNName())
		if err != nil {
			t.Fatal(err)
		}
		if !containsAll(string(out), "mtu 1450") {
			t.Errorf("%s TUN: %s", n.Name, out)
		}
		out, err = n.NS.Run(ctx, "ip", "route", "show", "10.244.0.0/16")
		if err != nil {
			t.Fatal(err)
		}
		if !containsAll(string(out), "dev "+n.TUNName()) {
			t.Errorf("%s: route 10.244.0.0/16 is %q, want it via dev %s", n.Name, out, n.TUNName())
		}
	}
	src, dst := n1.Pods[0], n2.Pods[0]
	// 1422 bytes of ICMP payload + 8 ICMP + 20 IP = 1450.
	r, err := pingUntil(ctx, src, dst.Addr, 15*time.Second, cluster.PingOptions{Count: 3, Size: 1422, DontFragment: true})
	if err != nil {
		t.Errorf("1450-byte packet with DF: %v\n%s", err, r.Output)
	}
	// 1451 bytes cannot leave the pod unfragmented.
	r, err = src.Ping(ctx, dst.Addr, cluster.PingOptions{Count: 2, Size: 1423, DontFragment: true})
	if err != nil {
		t.Fatal(err)
	}
	if !r.FragNeeded || r.MTU != 1450 || r.Received != 0 {
		t.Errorf("1451-byte packet with DF: want fragmentation needed with mtu 1450, got %+v\n%s", r, r.Output)
	}
	// The same from the node itself, whose route to other pods is the TUN.
	out, _ := n1.NS.Command(ctx, "ping", "-n", "-c", "1", "-W", "1", "-s", "1423", "-M", "do", dst.Addr.String()).CombinedOutput()
	if nr, err := cluster.ParsePing(string(out)); err != nil || !nr.FragNeeded || nr.MTU != 1450 {
		t.Errorf("1451-byte packet with DF from the node: want fragmentation needed with mtu 1450: %v\n%s", err, out)
	}
	res, err := cluster.Transfer(ctx, src, dst, 32<<20, cluster.TransferOptions{WriteSize: 1 << 20})
	if err != nil {
		t.Fatalf("transfer with 1 MiB writes: %v", err)
	}
	t.Logf("transfer with 1 MiB writes: %d bytes, %.0f Mbit/s", res.Bytes, res.Mbps())
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestMixedClusterSameHostGSO is TestMixedCluster's TCP check with the
// kernel node's underlay veth left as a container runtime leaves it, with
// segmentation offload on: the kernel's VXLAN then hands whole TSO
// super-frames (one outer header over up to 64 KB of inner TCP) to the veth,
// and the overlay node's UDP socket receives them unsegmented, as it does
// when flannel and overlay nodes are containers on one host (kind-style
// clusters). Pods must still exchange TCP in both directions.
func TestMixedClusterSameHostGSO(t *testing.T) {
	requireAgent(t)
	c := newCluster(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := addNodes(t, ctx, c, cluster.Agent)[0]
	k, err := c.AddNode(ctx, cluster.NodeOptions{Kind: cluster.KernelFlannel, UnderlayGSO: true})
	if err != nil {
		t.Fatal(err)
	}
	pingAll(t, ctx, c.Pods(), 20*time.Second)
	transferPairs(t, ctx, " with GSO super-frames on the underlay", [2]*cluster.Pod{a.Pods[0], k.Pods[0]}, [2]*cluster.Pod{k.Pods[1], a.Pods[1]})
	if st, err := a.Status(ctx); err == nil {
		t.Logf("%s drops: %v", a.Name, st.Drops)
	}
}
