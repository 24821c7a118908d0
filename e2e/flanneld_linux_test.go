//go:build flanneld

// The mixed-cluster check against a real flanneld (not built by default:
// the project neither vendors nor builds flannel). See e2e/KUBE.md:
//
//	FLANNELD_BIN=/path/to/flanneld go test -tags flanneld -run TestRealFlanneld -v ./e2e/

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"overlay/e2e/cluster"
)

// TestRealFlanneld: our agent and a real flanneld --kube-subnet-mgr (kernel
// vxlan) in one kube-mode cluster: flanneld's annotations are byte-equal to
// what the harness's emulation and our agent write, each side programs the
// other as a peer, and pods ping both ways and move 16 MiB both ways.
func TestRealFlanneld(t *testing.T) {
	bin := os.Getenv("FLANNELD_BIN")
	if bin == "" {
		t.Fatal("FLANNELD_BIN is not set: this test (build tag flanneld) needs a flanneld binary")
	}
	c := newKubeCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ag := addNodes(t, ctx, c, cluster.Agent)[0]
	fl, err := c.AddNode(ctx, cluster.NodeOptions{Kind: cluster.External})
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(filepath.Dir(fl.SubnetFile), "flanneld.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := fl.NS.Command(context.Background(), bin,
		"--kube-subnet-mgr",
		"--kubeconfig-file="+c.AgentKubeconfig(),
		"--net-config-path="+c.NetConfPath(),
		"--iface=eth0",
		"--subnet-file="+fl.SubnetFile,
		"--ip-masq=false",
		"--iptables-forward-rules=false",
		"-v=2",
	)
	cmd.Env = append(os.Environ(), "NODE_NAME="+fl.Name)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("flanneld log:\n%s", b)
		}
	})
	t.Logf("flanneld pid %d in %s, log %s", cmd.Process.Pid, fl.NS, logPath)
	if err := fl.AdoptExternal(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("flanneld node %s: subnet %v VtepMAC %v", fl.Name, fl.Subnet(), fl.VtepMAC())

	// flanneld's annotations, byte for byte, are what the emulation writes
	// and what checkAnnotations expects of our agent.
	node, err := c.NodeObject(ctx, fl)
	if err != nil {
		t.Fatal(err)
	}
	want := cluster.FlannelAnnotations(c.AnnotationPrefix(), fl.Underlay, 1, fl.VtepMAC())
	p := c.AnnotationPrefix() + "/"
	for k, v := range node.Annotations {
		if strings.HasPrefix(k, p) {
			t.Logf("flanneld wrote %s=%s", k, v)
			if want[k] != v {
				t.Errorf("flanneld's %s=%q, emulation writes %q", k, v, want[k])
			}
		}
	}
	for k := range want {
		if _, ok := node.Annotations[k]; !ok {
			t.Errorf("flanneld did not write %s", k)
		}
	}
	agNode, err := c.NodeObject(ctx, ag)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range agNode.Annotations {
		if strings.HasPrefix(k, p) {
			t.Logf("agent wrote    %s=%s", k, v)
		}
	}
	checkAnnotations(t, ctx, c, ag)
	checkAnnotations(t, ctx, c, fl)

	out, _ := fl.NS.Run(ctx, "ip", "-d", "link", "show", "flannel.1")
	t.Logf("flanneld's device:\n%s", out)
	waitFor(t, ctx, 20*time.Second, "the agent to see flanneld's node as a peer", func() bool {
		st, err := ag.Status(ctx)
		pr, ok := st.Peer(fl.Subnet())
		return err == nil && ok && pr.VtepMAC == fl.VtepMAC().String() && pr.Node == fl.Name
	})
	pingAll(t, ctx, c.Pods(), 30*time.Second)
	transferPairs(t, ctx, "", [2]*cluster.Pod{ag.Pods[0], fl.Pods[0]}, [2]*cluster.Pod{fl.Pods[1], ag.Pods[1]})
	out, _ = fl.NS.Run(ctx, "ip", "route", "show", "dev", "flannel.1")
	t.Logf("flanneld's routes:\n%s", out)
	out, _ = fl.NS.Run(ctx, "bridge", "fdb", "show", "dev", "flannel.1")
	t.Logf("flanneld's fdb:\n%s", out)
}
