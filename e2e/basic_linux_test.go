package e2e

import (
	"context"
	"testing"
	"time"

	"overlay/e2e/cluster"
)

// TestThreeNodes (issue #6, 1): three agent nodes; every pod pings every
// other pod, and a TCP transfer of tens of MB between pods on different
// nodes arrives with the right checksum.
func TestThreeNodes(t *testing.T) {
	requireAgent(t)
	c := newCluster(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	nodes := addNodes(t, ctx, c, cluster.Agent, cluster.Agent, cluster.Agent)
	seen := map[string]bool{}
	for _, n := range nodes {
		if seen[n.Subnet().String()] {
			t.Fatalf("two nodes hold subnet %v", n.Subnet())
		}
		seen[n.Subnet().String()] = true
		env := n.SubnetEnv()
		if env["FLANNEL_NETWORK"] != "10.244.0.0/16" || env["FLANNEL_MTU"] != "1450" || env["FLANNEL_IPMASQ"] != "false" {
			t.Errorf("%s subnet.env: %v", n.Name, env)
		}
	}
	pingAll(t, ctx, c.Pods(), 20*time.Second)

	const size = 48 << 20
	src, dst := nodes[0].Pods[0], nodes[2].Pods[1]
	r, err := cluster.Transfer(ctx, src, dst, size, cluster.TransferOptions{})
	if err != nil {
		t.Fatalf("transfer: %v", err)
	}
	t.Logf("transfer %s -> %s: %d bytes in %v (%.0f Mbit/s), sha256 %x", src, dst, r.Bytes, r.Duration.Round(time.Millisecond), r.Mbps(), r.ReceivedSHA256[:8])
}
