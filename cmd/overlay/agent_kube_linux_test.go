package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"overlay/e2e/cluster"
	"overlay/e2e/kubeapi/kubeapitest"
	"overlay/lease/kube"
)

// TestAgentKube runs the real overlay binary as two agents in kube mode
// (overlay up --kube-subnet-mgr) against a real kube-apiserver, each agent
// in its own network namespace joined by a veth, and sees a ping cross
// between their TUN addresses; /status and overlay status show the kube
// manager and the peer's Node; deleting a Node removes the peer. The
// apiserver runs on the host's loopback; the test forwards 127.0.0.1:<port>
// inside each namespace to it. The three-node e2e suite is in e2e/.
func TestAgentKube(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces, veth and TUN devices; run with sudo (CI runs it as root)")
	}
	for _, tool := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (apt-get install iproute2 iputils-ping)", tool)
		}
	}
	srv := kubeapitest.New(t)
	bin, err := cluster.BuildOverlay(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	rc, err := kube.ClientOptions{Kubeconfig: srv.Kubeconfig()}.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	c, err := corev1client.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"node-a", "node-b"} {
		cidr := fmt.Sprintf("10.244.%d.0/24", i+1)
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}}}
		if _, err := c.Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	const prefix = "ovl-ck-"
	if _, err := cluster.CleanupStale(ctx, prefix); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	netConf := filepath.Join(dir, "net-conf.json")
	if err := os.WriteFile(netConf, []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	nsA, nsB := prefix+"a", prefix+"b"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{nsA, nsB} {
		run("netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", ns).Run() })
		run("-n", ns, "link", "set", "lo", "up")
	}
	run("link", "add", prefix+"a0", "netns", nsA, "type", "veth", "peer", "name", prefix+"b0", "netns", nsB)
	for i, ns := range []string{nsA, nsB} {
		link := prefix + string(rune('a'+i)) + "0"
		run("-n", ns, "addr", "add", fmt.Sprintf("172.30.250.%d/24", 11+i), "dev", link)
		run("-n", ns, "link", "set", link, "up")
		forward(t, ns, srv.Port())
	}

	type agent struct {
		ns, node string
		cmd      *exec.Cmd
		log      string
		done     chan error
	}
	var agents []*agent
	defer func() {
		for _, a := range agents {
			_ = a.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-a.done:
			case <-time.After(10 * time.Second):
				_ = a.cmd.Process.Kill()
				<-a.done
			}
			if t.Failed() {
				out, _ := os.ReadFile(a.log)
				t.Logf("%s log:\n%s", a.node, tailLines(string(out), 40))
			}
		}
	}()
	for i, ns := range []string{nsA, nsB} {
		a := &agent{ns: ns, node: []string{"node-a", "node-b"}[i], log: filepath.Join(dir, ns+".log"), done: make(chan error, 1)}
		f, err := os.Create(a.log)
		if err != nil {
			t.Fatal(err)
		}
		a.cmd = exec.Command("ip", "netns", "exec", ns, bin, "up", "--kube-subnet-mgr",
			"--kubeconfig-file", srv.Kubeconfig(), "--net-config-path", netConf,
			"--iface", prefix+string(rune('a'+i))+"0", "--subnet-file", filepath.Join(dir, ns+".env"), "--log-level=debug")
		a.cmd.Env = append(os.Environ(), "NODE_NAME="+a.node)
		a.cmd.Stdout, a.cmd.Stderr = f, f
		if err := a.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { a.done <- a.cmd.Wait(); f.Close() }()
		agents = append(agents, a)
	}

	status := func(a *agent) (agentStatus, error) {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", a.ns, bin, "status", "--json").Output()
		if err != nil {
			return agentStatus{}, err
		}
		var st agentStatus
		return st, json.Unmarshal(out, &st)
	}
	// Generous: under make check's parallel load the agents have seen 40 s of
	// EOFs from the apiserver, after which their capped backoff (up to
	// 30 s) still runs before they retry.
	deadline := time.Now().Add(150 * time.Second)
	for {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", nsA, "ping", "-c", "1", "-W", "1", "-I", "10.244.1.0", "10.244.2.0").CombinedOutput()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping 10.244.1.0 -> 10.244.2.0 across the agents never answered: %v\n%s", err, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
	st, err := status(agents[1])
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || st.SubnetManager != "kube" || st.Node != "node-b" || st.Subnet != "10.244.2.0/24" ||
		len(st.Peers) != 1 || st.Peers[0].Node != "node-a" || st.Peers[0].Subnet != "10.244.1.0/24" || st.Totals["rx"].Packets == 0 {
		t.Errorf("status of node-b: ready %v, manager %q, node %q, subnet %s, peers %+v, rx %+v", st.Ready, st.SubnetManager, st.Node, st.Subnet, st.Peers, st.Totals["rx"])
	}
	env, err := os.ReadFile(filepath.Join(dir, nsA+".env"))
	if err != nil || !strings.Contains(string(env), "FLANNEL_SUBNET=10.244.1.1/24\n") || !strings.Contains(string(env), "FLANNEL_NETWORK=10.244.0.0/16\n") {
		t.Errorf("subnet.env of node-a: %q, %v", env, err)
	}
	text, err := exec.CommandContext(ctx, "ip", "netns", "exec", nsB, bin, "status").CombinedOutput()
	if err != nil || !strings.Contains(string(text), "subnet manager:  kube, Node node-b") || !strings.Contains(string(text), "node-a  10.244.1.0/24") {
		t.Errorf("overlay status on node-b: %v\n%s", err, text)
	}
	n, err := c.Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := n.Annotations["flannel.alpha.coreos.com/public-ip"]; got != "172.30.250.11" {
		t.Errorf("node-a public-ip annotation %q", got)
	}
	unavailable := ""
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeNetworkUnavailable {
			unavailable = string(cond.Status) + "/" + cond.Reason
		}
	}
	if unavailable != "False/FlannelIsUp" {
		t.Errorf("node-a NetworkUnavailable = %q, want False/FlannelIsUp", unavailable)
	}

	// Deleting node-b removes it from node-a's peers.
	if err := c.Nodes().Delete(ctx, "node-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		st, err := status(agents[0])
		if err == nil && len(st.Peers) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node-a still has peers %+v after node-b was deleted (%v)", st.Peers, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// forward listens on 127.0.0.1:port inside the named network namespace
// and relays every connection to 127.0.0.1:port of the test's own
// namespace, so an agent in ns reaches the test's API server, until the
// test ends.
func forward(t *testing.T, ns string, port int) {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	lnc := make(chan error, 1)
	var ln net.Listener
	go func() {
		// The listening socket belongs to the namespace it was made in;
		// this thread is thrown away afterwards (not unlocked).
		runtime.LockOSThread()
		if err := netns.Set(h); err != nil {
			lnc <- err
			return
		}
		var err error
		ln, err = net.Listen("tcp", addr)
		lnc <- err
	}()
	if err := <-lnc; err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", addr)
			if err != nil {
				in.Close()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
				go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
				<-done
				in.Close()
				out.Close()
				<-done
			}()
		}
	}()
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
