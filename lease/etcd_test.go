package lease

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Helpers shared by the tests that run against a real, embedded etcd.

const testPrefix = "/coreos.com/network"

// logRecorder is a slog handler that writes to the test log and keeps the
// messages, so tests can assert that something was logged.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
	t    testing.TB
	done bool
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Level.String() + " " + rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, b.String())
	if !r.done && rec.Level >= slog.LevelInfo {
		r.t.Log(b.String())
	}
	return nil
}

func (r *logRecorder) count(substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

func newRecorder(t testing.TB) *logRecorder {
	r := &logRecorder{t: t}
	t.Cleanup(func() { r.mu.Lock(); r.done = true; r.mu.Unlock() })
	return r
}

func newManager(t testing.TB, cli *clientv3.Client, o Options) *Manager {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(newRecorder(t))
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = time.Second
	}
	m, err := New(cli, o)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func putConfig(t testing.TB, cli *clientv3.Client, js string) {
	t.Helper()
	if _, err := cli.Put(context.Background(), testPrefix+"/config", js); err != nil {
		t.Fatal(err)
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// node returns acquire options for test node n (172.30.250.n).
func node(n int) AcquireOptions {
	a := netip.AddrFrom4([4]byte{172, 30, 250, byte(n)})
	return AcquireOptions{PublicIP: a, VtepMAC: VtepMAC("test", a)}
}

// etcdLeases returns how many etcd leases exist: the orphan check.
func etcdLeases(t testing.TB, cli *clientv3.Client) int {
	t.Helper()
	resp, err := cli.Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Leases)
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func rawValue(t testing.TB, cli *clientv3.Client, key string) (string, int64, bool) {
	t.Helper()
	resp, err := cli.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0, false
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].Lease, true
}

func slogNew(r *logRecorder) *slog.Logger { return slog.New(r) }

func contains(s, sub string) bool { return strings.Contains(s, sub) }
