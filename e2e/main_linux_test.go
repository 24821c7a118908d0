package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"overlay/e2e/cluster"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// prefix names every namespace these tests create.
const prefix = "ovl-e2e-"

var (
	// overlayBin is the overlay binary under test, built once by TestMain.
	overlayBin string
	buildErr   error

	// envErr says why the tests cannot run here (not root, no ip netns).
	envErr error

	live   sync.Mutex // guards active
	active = map[*cluster.Cluster]bool{}
)

func TestMain(m *testing.M) {
	envErr = checkEnv()
	var tmp string
	if envErr == nil {
		if n, err := cluster.CleanupStale(context.Background(), prefix); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: removing namespaces of an earlier run: %v\n", err)
		} else if len(n) > 0 {
			fmt.Fprintf(os.Stderr, "e2e: removed %d namespaces left by an earlier run\n", len(n))
		}
		tmp, overlayBin, buildErr = buildBinary()
	}
	stop := handleSignals()
	code := m.Run()
	stop()
	if tmp != "" {
		os.RemoveAll(tmp)
	}
	os.Exit(code)
}

// checkEnv says why namespace tests cannot run, or nil.
func checkEnv() error {
	if os.Geteuid() != 0 {
		return errors.New("e2e tests need root (network namespaces, veth, TUN, kernel VXLAN); run them with sudo")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("e2e tests need iproute2's `ip` (apt-get install iproute2)")
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		return fmt.Errorf("`ip netns` does not work here: %v: %s", err, bytes.TrimSpace(out))
	}
	if _, err := exec.LookPath("ping"); err != nil {
		return errors.New("e2e tests need ping (apt-get install iputils-ping)")
	}
	return nil
}

// buildBinary builds ./cmd/overlay into a temporary directory, unless
// OVERLAY_BIN names a prebuilt binary.
func buildBinary() (tmp, bin string, err error) {
	tmp, err = os.MkdirTemp("", prefix+"bin-")
	if err != nil {
		return "", "", err
	}
	bin, err = cluster.BuildOverlay(tmp)
	return tmp, bin, err
}

// handleSignals tears down every live cluster on SIGINT or SIGTERM and
// then dies of the same signal, so an interrupted run leaves nothing
// behind. The returned function stops the handler.
func handleSignals() (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case sig := <-ch:
			fmt.Fprintf(os.Stderr, "e2e: %v: tearing down clusters\n", sig)
			live.Lock()
			for c := range active {
				_ = c.Close()
			}
			live.Unlock()
			signal.Reset(sig)
			_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		case <-done:
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
		wg.Wait()
	}
}

// requireNamespaces skips the test when namespaces cannot be used here.
func requireNamespaces(t testing.TB) {
	t.Helper()
	if envErr != nil {
		t.Skipf("skipping: %v", envErr)
	}
}

// requireAgent skips the test while the overlay binary has no `up`
// command, and fails it when the binary does not build. Kernel-only tests
// do not need the binary: etcd is then Debian's.
func requireAgent(t testing.TB) {
	t.Helper()
	requireNamespaces(t)
	if buildErr != nil {
		t.Fatalf("building the overlay binary: %v", buildErr)
	}
	if !hasCommand("up") {
		t.Skip("skipping: the overlay binary has no `up` command yet (the node agent)")
	}
}

// hasCommand reports whether the overlay binary has the named command.
func hasCommand(name string) bool {
	return buildErr == nil && overlayBin != "" && exec.Command(overlayBin, name, "--help").Run() == nil
}

// newCluster builds a cluster for the test and registers its teardown:
// on failure the tail of etcd's and every agent's log is logged and the
// work directory is kept.
func newCluster(t *testing.T, opts cluster.Options) *cluster.Cluster {
	t.Helper()
	requireNamespaces(t)
	dir, err := os.MkdirTemp("", prefix+strings.ReplaceAll(t.Name(), "/", "_")+"-")
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "harness.log"))
	if err != nil {
		t.Fatal(err)
	}
	opts.Prefix = prefix
	if buildErr == nil {
		opts.Binary = overlayBin
	}
	opts.WorkDir = dir
	opts.Log = slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug}))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := cluster.New(ctx, opts)
	if err != nil {
		logf.Close()
		t.Fatalf("cluster: %v (work dir %s kept)", err, dir)
	}
	live.Lock()
	active[c] = true
	live.Unlock()
	t.Cleanup(func() {
		if t.Failed() {
			var b strings.Builder
			c.DumpLogs(&b, 40)
			t.Logf("cluster logs:\n%s", b.String())
		}
		if err := c.Close(); err != nil {
			t.Errorf("cluster teardown: %v", err)
		}
		live.Lock()
		delete(active, c)
		live.Unlock()
		logf.Close()
		if t.Failed() {
			t.Logf("work directory kept: %s (node logs, harness.log, etcd.log)", dir)
		} else {
			os.RemoveAll(dir)
		}
	})
	return c
}

// addNodes adds nodes of the given kinds, failing the test on error.
func addNodes(t *testing.T, ctx context.Context, c *cluster.Cluster, kinds ...cluster.NodeKind) []*cluster.Node {
	t.Helper()
	var nodes []*cluster.Node
	for _, k := range kinds {
		n, err := c.AddNode(ctx, cluster.NodeOptions{Kind: k})
		if err != nil {
			t.Fatalf("add %v node: %v", k, err)
		}
		t.Logf("node %s (%v): subnet %v, VtepMAC %v, underlay %v", n.Name, k, n.Subnet(), n.VtepMAC(), n.Underlay)
		nodes = append(nodes, n)
	}
	return nodes
}

// pingUntil pings dst from src until every echo request of one round gets
// its reply, or the timeout passes; it returns the last result.
func pingUntil(ctx context.Context, src *cluster.Pod, dst netip.Addr, timeout time.Duration, opts cluster.PingOptions) (cluster.PingResult, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		r, err := src.Ping(ctx, dst, opts)
		if err == nil && r.OK() {
			return r, nil
		}
		if ctx.Err() != nil {
			if err == nil {
				err = fmt.Errorf("%d of %d replies", r.Received, r.Transmitted)
			}
			return r, fmt.Errorf("%s -> %v: %w", src, dst, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// transferPairs sends 16 MiB from the first pod of each pair to the second
// and checks the sha256 at the receiver; what names the situation in errors.
func transferPairs(t *testing.T, ctx context.Context, what string, pairs ...[2]*cluster.Pod) {
	t.Helper()
	for _, pair := range pairs {
		tctx, tcancel := context.WithTimeout(ctx, 30*time.Second)
		r, err := cluster.Transfer(tctx, pair[0], pair[1], 16<<20, cluster.TransferOptions{})
		tcancel()
		if err != nil {
			t.Errorf("transfer %s -> %s%s: %v", pair[0], pair[1], what, err)
			continue
		}
		t.Logf("transfer %s -> %s: %d bytes, %.0f Mbit/s, sha256 ok", pair[0], pair[1], r.Bytes, r.Mbps())
	}
}

// pingAll checks that every pod reaches every other pod (each pair polled
// until it answers, up to timeout), a few pairs at a time.
func pingAll(t *testing.T, ctx context.Context, pods []*cluster.Pod, timeout time.Duration) {
	t.Helper()
	type pair struct{ src, dst *cluster.Pod }
	var pairs []pair
	for _, s := range pods {
		for _, d := range pods {
			if s != d {
				pairs = append(pairs, pair{s, d})
			}
		}
	}
	sem := make(chan struct{}, 4)
	errs := make([]error, len(pairs))
	var wg sync.WaitGroup
	for i, p := range pairs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, errs[i] = pingUntil(ctx, p.src, p.dst.Addr, timeout, cluster.PingOptions{Count: 3})
		}()
	}
	wg.Wait()
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
			t.Errorf("ping: %v", err)
		}
	}
	if failed == 0 {
		t.Logf("all %d pod pairs answered", len(pairs))
	}
}

func clientv3LeaseID(id int64) clientv3.LeaseID { return clientv3.LeaseID(id) }
