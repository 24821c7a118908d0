package suite

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"overlay/e2e/cluster"
)

// requireNetns skips the test unless it runs as root on a machine with
// network namespaces, kernel VXLAN and the load generators.
func requireNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, veth and kernel VXLAN (run go test as root)")
	}
	for _, tool := range []string{"ip", "bridge", "ping", "ss", "iperf3", "sockperf"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: apt-get install -y --no-install-recommends iproute2 iputils-ping iperf3 sockperf", tool)
		}
	}
	// Probe kernel VXLAN in a throwaway namespace.
	ctx := context.Background()
	ns := namePrefix + "probe"
	if err := ip(ctx, "netns", "add", ns); err != nil {
		t.Skipf("needs network namespaces: %v", err)
	}
	defer removeNetns(ctx, ns)
	if err := ip(ctx, "-n", ns, "link", "add", "vx", "type", "vxlan", "id", "1", "dstport", "8472"); err != nil {
		t.Skipf("needs kernel VXLAN (CONFIG_VXLAN): %v", err)
	}
}

// testProgress forwards the suite's progress lines to the test log and to
// an optional hook.
type testProgress struct {
	t    *testing.T
	mu   sync.Mutex
	hook func(line string)
}

func (w *testProgress) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for line := range strings.SplitSeq(strings.TrimRight(string(b), "\n"), "\n") {
		w.t.Log(line)
		if w.hook != nil {
			w.hook(line)
		}
	}
	return len(b), nil
}

// children lists the live child processes of the test binary.
func children() []string {
	me := strconv.Itoa(os.Getpid())
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:])) // state, ppid, ...
		if len(f) > 1 && f[1] == me && f[0] != "Z" {
			out = append(out, e.Name()+" "+string(b[:i+1]))
		}
	}
	return out
}

// assertNoLeftovers fails if a suite namespace, link or child process
// survived.
func assertNoLeftovers(t *testing.T) {
	t.Helper()
	names, err := netnsNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if strings.HasPrefix(n, namePrefix) {
			t.Errorf("namespace %s left behind", n)
		}
	}
	links, _ := os.ReadDir("/sys/class/net")
	for _, l := range links {
		if strings.HasPrefix(l.Name(), namePrefix) {
			t.Errorf("link %s left behind", l.Name())
		}
	}
	if c := children(); len(c) > 0 {
		t.Errorf("child processes left behind: %v", c)
	}
}

// TestQuickSuite runs the --quick suite on the underlay and kernel VXLAN
// paths, as CI does, and checks that the results file is complete: every
// metric of every path present, positive and plausible.
func TestQuickSuite(t *testing.T) {
	requireNetns(t)
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{
		Paths: []PathID{Underlay, KernelVXLAN}, Quick: true, OutDir: out, Probe: true,
		Command: "go test -run TestQuickSuite", Progress: &testProgress{t: t},
	})
	if errors.Is(err, ErrBusy) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	assertNoLeftovers(t)
	if err := WriteFiles(out, res); err != nil {
		t.Fatal(err)
	}
	back, err := ReadFile(filepath.Join(out, FileJSON))
	if err != nil {
		t.Fatal(err)
	}
	if back.Settings.Repetitions != 1 || back.Settings.TestSeconds != 1 || !back.Settings.Quick {
		t.Errorf("settings %+v, want quick: 1 repetition of 1 s", back.Settings)
	}
	if back.Host.CPUs < 1 || back.Host.IPerf3 == "" || back.Host.Kernel == "" {
		t.Errorf("host %+v incomplete", back.Host)
	}
	if p := back.Platform; p == nil {
		t.Error("no platform probe in the results")
	} else if !(p.SyscallNs > 0 && p.SyscallNs < 1e6) || !(p.CRTTP50 > 0) || p.CRTTP99 < p.CRTTP50 ||
		!(p.GoRTTP50 > 0) || p.GoRTTP99 < p.GoRTTP50 || p.GoRounds < 100 || p.Seconds != 1 {
		t.Errorf("implausible platform probe %+v", *p)
	}
	if len(back.Paths) != 2 {
		t.Fatalf("%d paths, want 2", len(back.Paths))
	}
	for _, pr := range back.Paths {
		if len(pr.Errors) > 0 {
			t.Errorf("%s: errors %v", pr.ID, pr.Errors)
		}
		if len(pr.Runs) != 1 || len(pr.Runs[0].Tests) != len(tests) {
			t.Fatalf("%s: %d runs, want 1 with %d tests", pr.ID, len(pr.Runs), len(tests))
		}
		for _, m := range Metrics {
			st, ok := pr.Summary[m.ID]
			if m.AgentOnly {
				if ok {
					t.Errorf("%s reports agent metric %s", pr.ID, m.ID)
				}
				continue
			}
			switch {
			case !ok || len(st.Values) != 1:
				t.Errorf("%s: metric %s missing (%+v)", pr.ID, m.ID, st)
			case m.ID == MetricUDP64Loss:
				if st.Median < 0 || st.Median >= 100 {
					t.Errorf("%s: loss %v%% not in [0,100)", pr.ID, st.Median)
				}
			case !(st.Median > 0):
				t.Errorf("%s: %s = %v, want > 0", pr.ID, m.ID, st.Median)
			case m.Unit == "cores" && st.Median > float64(back.Host.CPUs)+0.5:
				t.Errorf("%s: %s = %v cores on a %d-CPU machine", pr.ID, m.ID, st.Median, back.Host.CPUs)
			}
		}
		for _, s := range pr.Runs[0].Tests {
			if s.Seconds < 0.9 || s.AgentCores != nil {
				t.Errorf("%s/%s: %.2f s, agent cores %v; want ≥ 1 s and no agents", pr.ID, s.Test, s.Seconds, s.AgentCores)
			}
		}
	}
	for _, m := range Metrics {
		if m.Chart && !(back.Ratios[Underlay][m.ID] > 0) {
			t.Errorf("underlay/kernel ratio of %s = %v", m.ID, back.Ratios[Underlay][m.ID])
		}
	}
	for _, v := range back.Targets {
		if v.Status != StatusNotMeasured {
			t.Errorf("target %q judged without overlay: %s", v.Goal, v.Status)
		}
	}
	svg, err := os.ReadFile(filepath.Join(out, FileChart))
	if err != nil {
		t.Fatal(err)
	}
	if counts := checkSVG(t, svg); counts["rect"] < 10 {
		t.Errorf("chart has %d rects, want ≥ 10 bars", counts["rect"])
	}
	md, err := os.ReadFile(filepath.Join(out, FileMarkdown))
	if err != nil || !strings.Contains(string(md), "| metric | underlay (veth) | kernel VXLAN |") {
		t.Errorf("results.md: %v\n%s", err, md)
	}
}

// TestQuickSuiteTests runs one chosen test: the other tests' metrics are
// absent, not zero, and the settings say which test ran.
func TestQuickSuiteTests(t *testing.T) {
	requireNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{
		Paths: []PathID{Underlay}, Tests: []string{TestRTT}, Quick: true, OutDir: t.TempDir(),
		Progress: &testProgress{t: t},
	})
	if errors.Is(err, ErrBusy) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	assertNoLeftovers(t)
	if len(res.Settings.Tests) != 1 || res.Settings.Tests[0] != TestRTT || res.Platform != nil {
		t.Errorf("settings tests %v, platform %v; want [rtt] and no probe", res.Settings.Tests, res.Platform)
	}
	pr := res.Paths[0]
	if len(pr.Runs) != 1 || len(pr.Runs[0].Tests) != 1 || pr.Runs[0].Tests[0].Test != TestRTT {
		t.Fatalf("runs %+v, want one repetition of the rtt test", pr.Runs)
	}
	for _, m := range Metrics {
		_, ok := pr.Summary[m.ID]
		if want := m.ID == MetricRTTP50 || m.ID == MetricRTTP99; ok != want {
			t.Errorf("metric %s present = %v, want %v", m.ID, ok, want)
		}
	}
}

// buildOverlay builds the agent from this source tree, so the agent paths
// are tested against the agent of the same commit.
func buildOverlay(t *testing.T) string {
	t.Helper()
	bin, err := cluster.BuildOverlay(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestQuickSuiteAgents runs the --quick suite on the two agent paths: etcd,
// the agents' readiness, their subnets and the CPU and memory figures.
func TestQuickSuiteAgents(t *testing.T) {
	requireNetns(t)
	bin := buildOverlay(t)
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{
		Paths: []PathID{Overlay, OverlayB, OverlayNaive}, Quick: true, OutDir: out, OverlayBin: bin, OverlayBinB: bin,
		KeepLogs: true, Progress: &testProgress{t: t},
	})
	if errors.Is(err, ErrBusy) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	assertNoLeftovers(t)
	if !strings.Contains(res.Host.EtcdDescription, "etcd") || res.Host.OverlayVersion == "" {
		t.Errorf("host %+v lacks etcd or overlay version", res.Host)
	}
	for _, pr := range res.Paths {
		for _, m := range Metrics {
			st, ok := pr.Summary[m.ID]
			switch {
			case !ok:
				t.Errorf("%s: metric %s missing", pr.ID, m.ID)
			case m.ID != MetricUDP64Loss && !(st.Median > 0):
				t.Errorf("%s: %s = %v, want > 0", pr.ID, m.ID, st.Median)
			}
		}
		for _, s := range pr.Runs[0].Tests {
			if s.AgentCores == nil {
				t.Errorf("%s/%s: no agent CPU", pr.ID, s.Test)
			}
		}
	}
	for _, v := range res.Targets {
		want := v.Denominator == OverlayNaive
		if got := v.Status != StatusNotMeasured; got != want {
			t.Errorf("target %q: %s", v.Goal, v.Status)
		}
	}
	if got := res.sortedPaths(); !slices.Equal(got, []PathID{Overlay, OverlayB, OverlayNaive}) {
		t.Errorf("paths %v, want overlay, overlay-b, overlay-naive", got)
	}
	// Both agents of every path left their logs.
	logs, _ := filepath.Glob(filepath.Join(out, "logs", "*", "*", "agent.log"))
	if len(logs) != 6 {
		t.Errorf("agent logs %v, want 6", logs)
	}
}

// TestQuickSuiteFloor runs the --quick suite on kernel VXLAN and the two
// floor paths (floor-b with other relay flags): the relays' readiness,
// their CPU and memory, CPU per GB on every path and the side-by-side
// comparison.
func TestQuickSuiteFloor(t *testing.T) {
	requireNetns(t)
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{
		Paths: []PathID{KernelVXLAN, Floor, FloorB}, Quick: true, OutDir: out,
		FloorArgsB: []string{"--no-gro", "--lock-threads"}, KeepLogs: true, Progress: &testProgress{t: t},
	})
	if errors.Is(err, ErrBusy) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	assertNoLeftovers(t)
	for _, pr := range res.Paths {
		for _, m := range Metrics {
			st, ok := pr.Summary[m.ID]
			switch {
			case m.AgentOnly && !pr.ID.Relay():
			case !ok:
				t.Errorf("%s: metric %s missing", pr.ID, m.ID)
			case m.ID != MetricUDP64Loss && !(st.Median > 0):
				t.Errorf("%s: %s = %v, want > 0", pr.ID, m.ID, st.Median)
			}
		}
		for _, s := range pr.Runs[0].Tests {
			if (s.AgentCores != nil) != pr.ID.Relay() {
				t.Errorf("%s/%s: relay CPU %v", pr.ID, s.Test, s.AgentCores)
			}
			if !(s.KernelCores > 0) {
				t.Errorf("%s/%s: kernel CPU %v, want > 0", pr.ID, s.Test, s.KernelCores)
			}
		}
	}
	if res.Floor == nil {
		t.Fatal("no floor report")
	}
	for _, row := range res.Floor.Rows {
		if row.FloorPerKernel == nil || row.Overlay != nil {
			t.Errorf("floor row %+v: want floor/kernel, no overlay", row)
		}
	}
	for _, v := range res.Bars {
		if v.Status != StatusNotMeasured {
			t.Errorf("bar %q: %s without the overlay", v.Goal, v.Status)
		}
	}
	if md := Markdown(res); !strings.Contains(md, "## Against the floor (issue #14)") {
		t.Errorf("results.md lacks the floor comparison:\n%s", md)
	}
	logs, _ := filepath.Glob(filepath.Join(out, "logs", "*", "floor-*.log"))
	if len(logs) != 4 {
		t.Errorf("relay logs %v, want 4", logs)
	}
}

// TestInterruptCleansUp cancels a run in the middle of a test, as SIGINT
// does, after planting a stale namespace with a process in it, as a killed
// run leaves: the run removes the stale one first and everything of its
// own on the way out.
func TestInterruptCleansUp(t *testing.T) {
	requireNetns(t)
	ctx := context.Background()
	stale := nodes[0].ns
	if err := ip(ctx, "netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeNetns(context.Background(), stale) })
	sleeper, err := startProcess("stale sleeper", stale, filepath.Join(t.TempDir(), "sleep.log"), "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.stop() })

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var cancelled bool
	progress := &testProgress{t: t, hook: func(line string) {
		if strings.HasPrefix(line, "[1/") { // the first test is done: interrupt the second
			cancelled = true
			time.AfterFunc(500*time.Millisecond, cancel)
		}
	}}
	res, err := Run(ctx, Config{Paths: []PathID{KernelVXLAN}, Repetitions: 1, Duration: 5 * time.Second,
		OutDir: t.TempDir(), Progress: progress})
	if errors.Is(err, ErrBusy) {
		t.Skip(err)
	}
	if !cancelled {
		t.Fatalf("the first test never finished: %v", err)
	}
	if !errors.Is(err, context.Canceled) || res != nil {
		t.Fatalf("Run = %v, %v; want no results and context.Canceled", res, err)
	}
	select {
	case <-sleeper.done:
	case <-time.After(10 * time.Second):
		t.Error("the process in the stale namespace survived")
	}
	assertNoLeftovers(t)
}

// TestDialInNetns connects to a listener that exists only inside a
// namespace, many times, and checks that no thread of the test process was
// left in that namespace.
func TestDialInNetns(t *testing.T) {
	requireNetns(t)
	unlock, err := lockRun()
	if err != nil {
		t.Skip(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := namePrefix + "dial"
	if err := ip(ctx, "netns", "add", ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeNetns(context.Background(), ns) })
	if err := ip(ctx, "-n", ns, "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := inNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("ns"))
			c.Close()
		}
	})
	defer wg.Wait()
	defer ln.Close()

	addr := ln.Addr().String()
	for i := range 50 {
		c, err := dialInNetns(ctx, ns, "tcp", addr)
		if err != nil {
			t.Fatalf("dial %d in %s: %v", i, ns, err)
		}
		b := make([]byte, 2)
		_, err = io.ReadFull(c, b)
		c.Close()
		if err != nil || string(b) != "ns" {
			t.Fatalf("dial %d: read %q, %v", i, b, err)
		}
	}
	// The host's loopback has no such listener (with overwhelming
	// likelihood; a host service on the same ephemeral port would show as
	// an error naming it): the dials above ran in ns, and no thread of
	// this process was left there.
	for range 50 {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Fatalf("%s answers in the host namespace too (a thread left in %s, or a host service on that port)", addr, ns)
		}
	}
	if _, err := dialInNetns(ctx, namePrefix+"missing", "tcp", addr); err == nil {
		t.Error("dial in a missing namespace succeeded")
	}
}
