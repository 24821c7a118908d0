package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"overlay/e2e/kubeapi/kubeapitest"
)

// overlayBin is the overlay binary the harness's own clusters run (`overlay
// etcd` even where every node is an emulated kernel node), built once by
// TestMain when the namespace tests can run.
var overlayBin string

func TestMain(m *testing.M) {
	var tmp string
	if namespaceSkip() == "" {
		var err error
		if tmp, err = os.MkdirTemp("", "ovl-cluster-bin-"); err == nil {
			overlayBin, err = BuildOverlay(tmp)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "cluster tests: %v\n", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if tmp != "" {
		os.RemoveAll(tmp)
	}
	os.Exit(code)
}

// namespaceSkip says why the namespace tests cannot run here, or "".
func namespaceSkip() string {
	if os.Geteuid() != 0 {
		return "skipping: needs root for network namespaces"
	}
	if err := exec.Command("ip", "netns", "list").Run(); err != nil {
		return fmt.Sprintf("skipping: `ip netns` does not work here: %v", err)
	}
	return ""
}

// requireRoot skips a test that needs network namespaces when it cannot
// have them.
func requireRoot(t *testing.T) {
	t.Helper()
	if why := namespaceSkip(); why != "" {
		t.Skip(why)
	}
}

// TestDemoOnKernelNodes runs the whole demo (steps, leases, pings,
// throughput, summary, teardown) on emulated kernel flannel nodes, which
// need no agent, and checks its output and that nothing is left behind.
func TestDemoOnKernelNodes(t *testing.T) {
	requireRoot(t)
	const prefix = "ovl-e2d-"
	if _, err := CleanupStale(context.Background(), prefix); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := runDemo(ctx, &out, DemoOptions{Binary: overlayBin, Prefix: prefix, Nodes: 3, Throughput: 2 * time.Second}, KernelFlannel)
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	checkDemoOutput(t, out.String(), prefix,
		"✓ underlay 172.30.250.1/24", "/coreos.com/network/subnets/10.244.", `"BackendType":"vxlan"`,
		"30 of 30 pairs answered", "THROUGHPUT", "✓ tear down", "all checks passed")
}

// TestDemoInterrupted cancels the demo in the middle (as Ctrl-C does) and
// checks that it reports the interruption and tears everything down.
func TestDemoInterrupted(t *testing.T) {
	requireRoot(t)
	const prefix = "ovl-e2d-"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	errc := make(chan error, 1)
	go func() {
		errc <- runDemo(ctx, &out, DemoOptions{Binary: overlayBin, Prefix: prefix, Nodes: 3}, KernelFlannel)
	}()
	// Cancel once the first node is up.
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(out.String(), "n1: kernel") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	err := <-errc
	t.Logf("demo output:\n%s", out.String())
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Errorf("demo error = %v, want an interruption", err)
	}
	left, _ := os.ReadDir(netnsDir)
	for _, e := range left {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestDemoKube runs `overlay demo --kube` (three agents with
// --kube-subnet-mgr on a real kube-apiserver) and checks its output and
// that nothing is left behind.
func TestDemoKube(t *testing.T) {
	requireRoot(t)
	const prefix = "ovl-e2k-"
	bin := kubeapitest.Binary(t)
	if _, err := CleanupStale(context.Background(), prefix); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := runDemo(ctx, &out, DemoOptions{Binary: overlayBin, Prefix: prefix, Nodes: 3, Throughput: time.Second, Kube: true, APIServerBinary: bin}, Agent)
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	checkDemoOutput(t, out.String(), prefix,
		"kube-apiserver on https://172.30.250.1:6443", "overlay up --kube-subnet-mgr", "10.244.3.0/24",
		"flannel.alpha.coreos.com/kube-subnet-manager=true", `flannel.alpha.coreos.com/backend-data={"VNI":1,"VtepMAC":"`,
		"30 of 30 pairs answered", "THROUGHPUT", "✓ tear down agents, apiserver", "all checks passed")
}

// checkDemoOutput fails t unless out holds every wanted line and no failed
// step, and no namespace with prefix is left behind.
func checkDemoOutput(t *testing.T, out, prefix string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if strings.Contains(out, "✗") || strings.Contains(out, "FAIL") {
		t.Error("demo output reports a failed step")
	}
	left, err := os.ReadDir(netnsDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range left {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
}
