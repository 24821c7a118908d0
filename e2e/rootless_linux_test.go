package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"overlay/e2e/cluster"
)

// nobody is the unprivileged user the rootless agent runs as.
const nobody = 65534

// TestRootless (issue #6, 7): an agent started as a non-root user inside
// its own user and network namespace carries pod traffic to and from a
// root agent and a kernel flannel node.
func TestRootless(t *testing.T) {
	requireAgent(t)
	for _, tool := range []string{"setpriv", "unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: needs util-linux's %s", tool)
		}
	}
	if out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"unshare", "--user", "--map-root-user", "--net", "true").CombinedOutput(); err != nil {
		t.Skipf("skipping: unprivileged users may not create user namespaces here: %v: %s", err, out)
	}
	// The unprivileged user must be able to open the TUN clone device and
	// execute the binary; both are restored afterwards.
	st, err := os.Stat("/dev/net/tun")
	if err != nil {
		t.Skipf("skipping: no /dev/net/tun: %v", err)
	}
	if err := os.Chmod("/dev/net/tun", 0o666); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Chmod("/dev/net/tun", st.Mode().Perm()); err != nil {
			t.Errorf("restore /dev/net/tun mode %v: %v", st.Mode().Perm(), err)
		}
	})
	binDir := filepath.Dir(overlayBin)
	if bst, err := os.Stat(binDir); err == nil && bst.Mode().Perm()&0o005 != 0o005 {
		if err := os.Chmod(binDir, bst.Mode().Perm()|0o005); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod(binDir, bst.Mode().Perm()) })
	}

	c := newCluster(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root := addNodes(t, ctx, c, cluster.Agent)[0]
	rl, err := c.AddNode(ctx, cluster.NodeOptions{Kind: cluster.Agent, Rootless: &cluster.Rootless{UID: nobody, GID: nobody}})
	if err != nil {
		t.Fatalf("rootless agent node: %v", err)
	}
	k := addNodes(t, ctx, c, cluster.KernelFlannel)[0]
	t.Logf("rootless node %s: subnet %v, VtepMAC %v", rl.Name, rl.Subnet(), rl.VtepMAC())

	ids, err := rl.AgentCredentials()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if id != nobody {
			t.Fatalf("rootless agent runs with uids %v, want all %d", ids, nobody)
		}
	}
	st2, err := rl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rootless agent: uids %v, TUN %s (%s), mtu %d", ids, st2.TUN, st2.TUNMode, st2.MTU)

	pingAll(t, ctx, c.Pods(), 20*time.Second)
	transferPairs(t, ctx, "", [2]*cluster.Pod{root.Pods[0], rl.Pods[0]}, [2]*cluster.Pod{rl.Pods[1], k.Pods[0]})
	if err := rl.Restart(ctx); err != nil {
		t.Fatalf("restart the rootless agent: %v", err)
	}
	if _, err := pingUntil(ctx, root.Pods[1], rl.Pods[1].Addr, 15*time.Second, cluster.PingOptions{}); err != nil {
		t.Errorf("after restarting the rootless agent: %v", err)
	}
}
