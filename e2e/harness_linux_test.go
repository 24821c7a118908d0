package e2e

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"overlay/e2e/cluster"
)

// TestHarnessKernelOnly proves the harness without the agent: two emulated
// kernel flannel nodes register leases in flannel's exact JSON, program
// each other as vxlan peers from etcd, and their pods reach each other over
// the kernel's VXLAN. Removing a lease removes the peer's kernel entries.
func TestHarnessKernelOnly(t *testing.T) {
	c := newCluster(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	t.Logf("etcd server: %s", strings.Join(c.EtcdServer(), " "))
	nodes := addNodes(t, ctx, c, cluster.KernelFlannel, cluster.KernelFlannel)
	n1, n2 := nodes[0], nodes[1]

	// Leases: flannel's exact JSON, bound to an etcd lease with a TTL.
	leases, err := c.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 2 {
		t.Fatalf("got %d leases, want 2: %+v", len(leases), leases)
	}
	exact := regexp.MustCompile(`^\{"PublicIP":"172\.30\.250\.1[12]","PublicIPv6":null,"BackendType":"vxlan","BackendData":\{"VNI":1,"VtepMAC":"([0-9a-f]{2}:){5}[0-9a-f]{2}"\}\}$`)
	for _, l := range leases {
		if !exact.Match(l.Value) {
			t.Errorf("lease %s value %s: not flannel's JSON shape", l.Key, l.Value)
		}
		if !regexp.MustCompile(`^/coreos\.com/network/subnets/10\.244\.\d+\.0-24$`).MatchString(l.Key) {
			t.Errorf("lease key %s: not flannel's key shape", l.Key)
		}
		if l.EtcdLease == 0 {
			t.Errorf("lease %s is not bound to an etcd lease", l.Key)
			continue
		}
		ttl, err := c.Etcd().TimeToLive(ctx, clientv3LeaseID(l.EtcdLease))
		if err != nil || ttl.TTL <= 0 {
			t.Errorf("lease %s: etcd lease TTL %v, err %v", l.Key, ttl, err)
		}
	}
	for _, n := range nodes {
		l, err := c.Lease(ctx, n.Subnet())
		if err != nil {
			t.Fatal(err)
		}
		if l.PublicIP != n.Underlay || !bytes.Equal(l.VtepMAC, n.VtepMAC()) {
			t.Errorf("%s lease %s: PublicIP %v VtepMAC %v, want %v %v", n.Name, l.Key, l.PublicIP, l.VtepMAC, n.Underlay, n.VtepMAC())
		}
	}

	// flannel.1 exactly as flannel creates it.
	out, err := n1.NS.Run(ctx, "ip", "-d", "addr", "show", "flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"mtu 1450", "vxlan id 1 local " + n1.Underlay.String() + " dev eth0", "dstport 8472", "nolearning",
		"inet " + n1.Subnet().Addr().String() + "/32"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("flannel.1 lacks %q:\n%s", want, out)
		}
	}

	// Each node holds the other as a peer.
	for _, pair := range [][2]*cluster.Node{{n1, n2}, {n2, n1}} {
		checkKernelPeer(t, pair[0], pair[1], true)
	}

	pingAll(t, ctx, c.Pods(), 20*time.Second)
	r, err := cluster.Transfer(ctx, n1.Pods[0], n2.Pods[1], 16<<20, cluster.TransferOptions{})
	if err != nil {
		t.Fatalf("transfer: %v", err)
	}
	t.Logf("transfer %s -> %s: %d bytes in %v (%.0f Mbit/s), sha256 %x", n1.Pods[0], n2.Pods[1], r.Bytes, r.Duration.Round(time.Millisecond), r.Mbps(), r.ReceivedSHA256[:8])

	// A deleted lease of a stopped node disappears from the other's kernel.
	if err := n2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteLease(ctx, n2.Subnet()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, 10*time.Second, "n2's entries removed from n1", func() bool {
		return checkKernelPeerQuiet(n1, n2) == errGone
	})
	if r, _ := n1.Pods[0].Ping(ctx, n2.Pods[0].Addr, cluster.PingOptions{Count: 1, Wait: 500 * time.Millisecond}); r.Received != 0 {
		t.Errorf("ping to a removed peer's pod still answered:\n%s", r.Output)
	}
}

type peerState string

const errGone peerState = "gone"

// checkKernelPeerQuiet reports "" when kn holds peer as a full vxlan peer,
// errGone when it holds none of peer's entries, and a description
// otherwise.
func checkKernelPeerQuiet(kn, peer *cluster.Node) peerState {
	e, err := kn.KernelEntries()
	if err != nil {
		return peerState(err.Error())
	}
	gw := peer.Subnet().Addr()
	mac := peer.VtepMAC().String()
	neigh, hasNeigh := e.Neighbours[gw]
	dst, hasFDB := e.FDB[mac]
	via, hasRoute := e.Routes[peer.Subnet()]
	switch {
	case !hasNeigh && !hasFDB && !hasRoute:
		return errGone
	case neigh == mac && dst == peer.Underlay && via == gw:
		return ""
	}
	return peerState("partial: neigh " + neigh + " fdb " + dst.String() + " route via " + via.String())
}

func checkKernelPeer(t *testing.T, kn, peer *cluster.Node, want bool) {
	t.Helper()
	got := checkKernelPeerQuiet(kn, peer)
	if want && got != "" || !want && got != errGone {
		t.Errorf("%s's kernel entries for %s (%v %v via %v): %s", kn.Name, peer.Name, peer.Subnet(), peer.VtepMAC(), peer.Underlay, got)
	}
}

// waitFor polls cond every 100 ms until it holds, failing the test after
// timeout.
func waitFor(t *testing.T, ctx context.Context, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
