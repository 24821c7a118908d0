package main

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"overlay/e2e/cluster"
)

// TestAgentPingCrosses starts the real overlay binary as two agents against
// a real etcd (overlay etcd), each in its own network namespace, and sees a
// ping cross between pods behind them. The second agent masquerades
// (--ip-masq), so its nftables or iptables rules are checked too. The
// multi-node suite proper is in e2e/.
func TestAgentPingCrosses(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces, veth and TUN devices; run with sudo (CI runs it as root)")
	}
	for _, tool := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (apt-get install iproute2 iputils-ping)", tool)
		}
	}
	bin, err := cluster.BuildOverlay(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := cluster.CleanupStale(ctx, "ovl-cmd-"); err != nil {
		t.Fatal(err)
	}
	c, err := cluster.New(ctx, cluster.Options{Prefix: "ovl-cmd-", Binary: bin, WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			var logs strings.Builder
			c.DumpLogs(&logs, 40)
			t.Log(logs.String())
		}
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	}()
	a, err := c.AddNode(ctx, cluster.NodeOptions{Kind: cluster.Agent, Pods: 1})
	if err != nil {
		t.Fatal(err)
	}
	masq := []string{}
	if _, err := exec.LookPath("nft"); err == nil {
		masq = append(masq, "--ip-masq")
	} else if _, err := exec.LookPath("iptables"); err == nil {
		masq = append(masq, "--ip-masq")
	}
	b, err := c.AddNode(ctx, cluster.NodeOptions{Kind: cluster.Agent, Pods: 1, Args: masq})
	if err != nil {
		t.Fatal(err)
	}

	var res cluster.PingResult
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err = a.Pods[0].Ping(ctx, b.Pods[0].Addr, cluster.PingOptions{Count: 3})
		if err == nil && res.Received > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping %v -> %v never answered: %v\n%s", a.Pods[0], b.Pods[0], err, res.Output)
		}
		time.Sleep(200 * time.Millisecond)
	}

	st, err := b.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || len(st.Peers) != 1 || st.Peers[0].Subnet != a.Subnet().String() || st.Totals["rx"].Packets == 0 {
		t.Errorf("status of %s = ready %v, peers %+v, rx %+v; want ready, one peer %v, traffic", b.Name, st.Ready, st.Peers, st.Totals["rx"], a.Subnet())
	}
	// Agents send a real outer UDP checksum, so with steering every frame
	// from a arrives on the checksummed socket.
	if st.ChecksumSteering && st.Checksums.OuterVerified == 0 {
		t.Errorf("status of %s: checksum steering on but no outer-checksummed datagram counted (%+v)", b.Name, st.Checksums)
	}

	if len(masq) > 0 {
		var out []byte
		if _, err := exec.LookPath("nft"); err == nil {
			out, err = b.NS.Command(ctx, "nft", "list", "table", "ip", "overlay").CombinedOutput()
			if err != nil {
				t.Fatalf("nft list table ip overlay: %v\n%s", err, out)
			}
		} else {
			out, err = b.NS.Command(ctx, "iptables", "-t", "nat", "-S", "OVERLAY-POSTRTG").CombinedOutput()
			if err != nil {
				t.Fatalf("iptables -S: %v\n%s", err, out)
			}
		}
		if !strings.Contains(string(out), "10.244.0.0/16") || !strings.Contains(strings.ToLower(string(out)), "masquerade") {
			t.Errorf("masquerade rules of %s:\n%s", b.Name, out)
		}
	}
}
