package e2e

import (
	"context"
	"encoding/binary"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"overlay/e2e/cluster"
	"overlay/e2e/kubeapi/kubeapitest"
)

// newKubeCluster builds a kube-mode cluster: a real kube-apiserver over the
// hub's etcd, agents with --kube-subnet-mgr.
func newKubeCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	requireAgent(t)
	bin := kubeapitest.Binary(t)
	return newCluster(t, cluster.Options{Kube: &cluster.KubeOptions{APIServerBinary: bin}})
}

// vxlanTo matches IPv4 VXLAN datagrams (UDP to 8472) from src to dst.
func vxlanTo(src, dst netip.Addr) func(pkt []byte) bool {
	return func(p []byte) bool {
		if len(p) < 28 || p[0]>>4 != 4 || p[9] != 17 {
			return false
		}
		ihl := int(p[0]&0x0f) * 4
		if len(p) < ihl+8 || binary.BigEndian.Uint16(p[ihl+2:]) != cluster.VXLANPort {
			return false
		}
		s, _ := netip.AddrFromSlice(p[12:16])
		d, _ := netip.AddrFromSlice(p[16:20])
		return s == src && d == dst
	}
}

var backendDataRE = regexp.MustCompile(`^\{"VNI":1,"VtepMAC":"([0-9a-f]{2}:){5}[0-9a-f]{2}"\}$`)

// checkAnnotations: the node's Node carries flannel's annotations with
// flannel's values, and its VtepMAC is the one the node uses.
func checkAnnotations(t *testing.T, ctx context.Context, c *cluster.Cluster, n *cluster.Node) {
	t.Helper()
	node, err := c.NodeObject(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	p := c.AnnotationPrefix() + "/"
	a := node.Annotations
	want := map[string]string{
		p + "backend-type":        "vxlan",
		p + "kube-subnet-manager": "true",
		p + "public-ip":           n.Underlay.String(),
		p + "backend-data":        `{"VNI":1,"VtepMAC":"` + n.VtepMAC().String() + `"}`,
	}
	for k, v := range want {
		if a[k] != v {
			t.Errorf("%s annotation %s = %q, want %q", n.Name, k, a[k], v)
		}
	}
	for k := range a {
		if strings.HasPrefix(k, p) && want[k] == "" {
			t.Errorf("%s has an annotation flanneld would not write for an IPv4 vxlan node: %s=%q", n.Name, k, a[k])
		}
	}
	if !backendDataRE.MatchString(a[p+"backend-data"]) {
		t.Errorf("%s backend-data %q: not flannel's shape", n.Name, a[p+"backend-data"])
	}
}

// TestKubeCluster: three agents in kube mode on a real apiserver: Nodes
// with pod CIDRs (made by the test, as a controller-manager would), agents
// with the deploy manifest's RBAC; pods ping across every pair, iperf3
// between two; /status names the manager and the peers' Nodes; a changed
// public-ip-overwrite moves traffic to the new address; a deleted Node
// disappears as a peer.
func TestKubeCluster(t *testing.T) {
	c := newKubeCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes := addNodes(t, ctx, c, cluster.Agent, cluster.Agent, cluster.Agent)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		want, _ := c.PodCIDR(n.Index)
		if n.Subnet() != want {
			t.Errorf("%s subnet %v, want its Node's podCIDR %v", n.Name, n.Subnet(), want)
		}
		checkAnnotations(t, ctx, c, n)
	}

	pingAll(t, ctx, c.Pods(), 20*time.Second)

	bps, retr, err := cluster.Iperf3(ctx, n1.Pods[0], n2.Pods[0], 2*time.Second)
	if err != nil {
		t.Errorf("iperf3: %v", err)
	} else {
		if bps <= 0 {
			t.Errorf("iperf3 %s -> %s moved nothing", n1.Pods[0], n2.Pods[0])
		}
		t.Logf("iperf3 %s -> %s: %.0f Mbit/s, %d retransmits", n1.Pods[0], n2.Pods[0], bps/1e6, retr)
	}

	st, err := n1.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.SubnetManager != "kube" || st.Node != n1.Name {
		t.Errorf("n1 /status subnet_manager %q node %q, want kube and %s", st.SubnetManager, st.Node, n1.Name)
	}
	for _, peer := range []*cluster.Node{n2, n3} {
		p, ok := st.Peer(peer.Subnet())
		if !ok || p.Node != peer.Name || p.VtepMAC != peer.VtepMAC().String() {
			t.Errorf("n1 /status peer for %s: %+v (found %v), want node %s VtepMAC %v", peer.Subnet(), p, ok, peer.Name, peer.VtepMAC())
		}
	}

	// public-ip-overwrite on n2: n1 sends n2's VXLAN traffic to the new
	// address, and pods still reach each other.
	newIP := netip.MustParseAddr("172.30.250.112")
	if err := n2.AddUnderlayAddr(newIP); err != nil {
		t.Fatal(err)
	}
	// The node moves to the new address: it is added to eth0 and made the
	// source of the node's underlay traffic (the agent's socket is
	// unbound, so the route's src picks it), so n1's source check sees
	// n2's datagrams come from the address n2's Node names. (An SNAT rule
	// would not do: conntrack keeps the earlier, untranslated flow.)
	if out, err := n2.NS.Run(ctx, "ip", "route", "replace", cluster.Underlay.String(), "dev", "eth0", "src", newIP.String()); err != nil {
		t.Fatalf("route src %v: %v: %s", newIP, err, out)
	}
	if err := c.SetNodeAnnotation(ctx, n2, "public-ip-overwrite", newIP.String()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, 20*time.Second, "n1 to send to n2's public-ip-overwrite", func() bool {
		st, err := n1.Status(ctx)
		p, ok := st.Peer(n2.Subnet())
		return err == nil && ok && strings.HasPrefix(p.Endpoint, newIP.String()+":")
	})
	capNew, err := n2.Capture(vxlanTo(n1.Underlay, newIP))
	if err != nil {
		t.Fatal(err)
	}
	capOld, err := n2.Capture(vxlanTo(n1.Underlay, n2.Underlay))
	if err != nil {
		t.Fatal(err)
	}
	r, perr := pingUntil(ctx, n1.Pods[0], n2.Pods[0].Addr, 15*time.Second, cluster.PingOptions{Count: 5})
	time.Sleep(200 * time.Millisecond)
	atNew, _ := capNew.Stop()
	atOld, _ := capOld.Stop()
	if perr != nil {
		st1, _ := n1.Status(ctx)
		t.Errorf("ping across the overwritten address: %v\n%s\nn1 drops: %v", perr, r.Output, st1.Drops)
	}
	if len(atNew) < r.Transmitted || r.Transmitted == 0 {
		t.Errorf("VXLAN datagrams n1 -> %v seen on n2: %d, want >= %d (pings sent)", newIP, len(atNew), r.Transmitted)
	}
	if len(atOld) != 0 {
		t.Errorf("%d VXLAN datagrams still went to n2's old address %v", len(atOld), n2.Underlay)
	}
	t.Logf("after public-ip-overwrite: %d datagrams at %v, %d at %v", len(atNew), newIP, len(atOld), n2.Underlay)

	// Deleting n3's Node removes it as a peer of n1 and n2, and its pods
	// become unreachable.
	if err := c.DeleteNodeObject(ctx, n3); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*cluster.Node{n1, n2} {
		waitFor(t, ctx, 20*time.Second, n.Name+" to drop the deleted Node "+n3.Name, func() bool {
			st, err := n.Status(ctx)
			_, ok := st.Peer(n3.Subnet())
			return err == nil && !ok
		})
	}
	if r, _ := n1.Pods[0].Ping(ctx, n3.Pods[0].Addr, cluster.PingOptions{Count: 2, Wait: 500 * time.Millisecond}); r.Received != 0 {
		t.Errorf("a deleted Node's pod still answered:\n%s", r.Output)
	}
	if _, err := pingUntil(ctx, n1.Pods[0], n2.Pods[1].Addr, 10*time.Second, cluster.PingOptions{Count: 3}); err != nil {
		t.Errorf("after deleting n3, n1 -> n2: %v", err)
	}
}

// TestKubeAPIServerRestart: the apiserver crashes (SIGKILL) and comes back
// while pods ping each other every 50 ms: no ping is lost, because the
// agents' datapath does not depend on the API; after the restart the
// agents reconcile (a node added afterwards is reached).
func TestKubeAPIServerRestart(t *testing.T) {
	c := newKubeCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes := addNodes(t, ctx, c, cluster.Agent, cluster.Agent)
	n1, n2 := nodes[0], nodes[1]
	if _, err := pingUntil(ctx, n1.Pods[0], n2.Pods[0].Addr, 20*time.Second, cluster.PingOptions{Count: 3}); err != nil {
		t.Fatal(err)
	}

	type result struct {
		r   cluster.PingResult
		err error
	}
	done := make(chan result, 1)
	const count = 200 // 10 s at 50 ms
	go func() {
		r, err := n1.Pods[0].Ping(ctx, n2.Pods[0].Addr, cluster.PingOptions{Count: count, Interval: 50 * time.Millisecond, Wait: time.Second})
		done <- result{r, err}
	}()
	time.Sleep(time.Second)
	down := time.Now()
	c.KillAPIServer()
	time.Sleep(2 * time.Second)
	if err := c.RestartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("apiserver down for %v (kill, 2 s, restart until /readyz)", time.Since(down).Round(time.Millisecond))
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	lost := res.r.Transmitted - res.r.Received
	t.Logf("pings during the outage: %d sent, %d lost", res.r.Transmitted, lost)
	if res.r.Transmitted != count || lost != 0 {
		t.Errorf("%d of %d pings lost across the apiserver restart, want none:\n%s", lost, res.r.Transmitted, res.r.Output)
	}
	for _, n := range nodes {
		if !n.Running() {
			t.Errorf("%s's agent exited during the apiserver outage:\n%s", n.Name, n.LogTail(20))
		}
	}

	n3 := addNodes(t, ctx, c, cluster.Agent)[0]
	if _, err := pingUntil(ctx, n1.Pods[0], n3.Pods[0].Addr, 30*time.Second, cluster.PingOptions{Count: 3}); err != nil {
		t.Errorf("a node added after the restart is not reached from n1: %v", err)
	}
}

// TestKubeMixed: an agent and an emulated flanneld --kube-subnet-mgr node
// (kernel VXLAN, flanneld's annotations) in one cluster: both publish the
// same annotations, see each other as peers and carry pod traffic both
// ways; deleting the agent's Node removes the kernel node's route to it.
func TestKubeMixed(t *testing.T) {
	c := newKubeCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes := addNodes(t, ctx, c, cluster.Agent, cluster.KernelFlannel)
	ag, kn := nodes[0], nodes[1]
	for _, n := range nodes {
		checkAnnotations(t, ctx, c, n)
	}
	waitFor(t, ctx, 10*time.Second, "the kernel node to program the agent as a peer", func() bool {
		return checkKernelPeerQuiet(kn, ag) == ""
	})
	pingAll(t, ctx, c.Pods(), 20*time.Second)
	transferPairs(t, ctx, "", [2]*cluster.Pod{ag.Pods[0], kn.Pods[0]}, [2]*cluster.Pod{kn.Pods[1], ag.Pods[1]})

	st, err := ag.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := st.Peer(kn.Subnet()); !ok || p.Node != kn.Name || p.VtepMAC != kn.VtepMAC().String() {
		t.Errorf("agent's peer for the kernel node: %+v (found %v)", p, ok)
	}

	if err := c.DeleteNodeObject(ctx, ag); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, 10*time.Second, "the kernel node to remove the deleted agent Node's route", func() bool {
		return checkKernelPeerQuiet(kn, ag) == errGone
	})
}
