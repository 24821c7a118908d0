package suite

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// errSetup marks a failure to set a path up (as opposed to a failed
// test): such a path is not retried in later repetitions.
var errSetup = errors.New("setup failed")

// settle is the pause between tests, so queues filled by one test (the
// UDP flood especially) drain before the next starts.
const settle = 300 * time.Millisecond

func run(ctx context.Context, cfg Config) (res *Results, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if slices.ContainsFunc(cfg.Paths, PathID.Agent) {
		bins := []string{cfg.OverlayBin}
		if slices.Contains(cfg.Paths, OverlayB) {
			bins = append(bins, cfg.OverlayBinB)
		}
		for _, bin := range bins {
			if _, err := os.Stat(bin); err != nil {
				return nil, fmt.Errorf("%w: overlay binary: %v (build it with `make build`)", errConfig, err)
			}
			if !hasCommand(ctx, bin, "up") {
				return nil, fmt.Errorf("%w: %s has no `up` command; measure the other paths with --paths underlay,kernel-vxlan", errConfig, bin)
			}
		}
	}
	unlock, err := lockRun()
	if err != nil {
		return nil, err
	}
	defer unlock()
	undo := &undoStack{log: cfg.Logger}
	defer func() {
		if cerr := undo.run(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if err := ensureTools(ctx, cfg); err != nil {
		return nil, err
	}

	res = &Results{
		Schema:  SchemaVersion,
		Command: cfg.Command,
		Started: time.Now().UTC(),
		Host:    hostInfo(ctx, cfg),
		Settings: Settings{
			Paths: cfg.Paths, Tests: cfg.Tests, Repetitions: cfg.Repetitions, TestSeconds: int(cfg.Duration / time.Second),
			Quick: cfg.Quick, TUNDriver: cfg.TUNDriver, UnderlayMTU: underlayMTU, OverlayMTU: overlayMTU,
			UDPPayload: udpPayload, PingPongSize: pingPongSize,
		},
		Metrics: Metrics,
	}
	for _, p := range cfg.Paths {
		res.Paths = append(res.Paths, PathResult{ID: p, Title: p.Title()})
	}

	if err := removeStale(ctx, func(what string) { fmt.Fprintf(cfg.Progress, "removing %s left by an earlier run\n", what) }); err != nil {
		return nil, fmt.Errorf("remove stale benchmark namespaces: %w", err)
	}
	work, err := os.MkdirTemp("", namePrefix+"work-")
	if err != nil {
		return nil, err
	}
	undo.push("remove "+work, func() error { return os.RemoveAll(work) })
	if cfg.KeepLogs {
		dst := filepath.Join(cfg.OutDir, "logs")
		undo.push("copy logs to "+dst, func() error { return copyLogs(work, dst) })
	}
	if err := setupTopology(ctx, undo); err != nil {
		return nil, fmt.Errorf("two-node topology: %w", err)
	}

	var selected []test
	for _, t := range tests {
		if slices.Contains(cfg.Tests, t.id) {
			selected = append(selected, t)
		}
	}
	r := &runner{cfg: cfg, res: res, work: work, undo: undo, start: time.Now(), tests: selected,
		total: cfg.Repetitions * len(cfg.Paths) * len(selected)}
	if la := res.Host.LoadAvgStart[0]; la > 0.5*float64(res.Host.CPUs) {
		fmt.Fprintf(cfg.Progress, "warning: the machine is busy (load average %.2f on %d CPUs): figures will be noisy; the ratios of the same run are fairer than the absolute values\n",
			la, res.Host.CPUs)
	}
	if cfg.Probe {
		p, perr := r.probe(ctx)
		switch {
		case ctx.Err() != nil:
			return nil, fmt.Errorf("interrupted: %w", ctx.Err())
		case perr != nil:
			// The probe explains the figures; it is not one of them.
			fmt.Fprintf(cfg.Progress, "platform probe FAILED (the paths are measured anyway): %v\n", perr)
		default:
			res.Platform = p
		}
	}
	fmt.Fprintf(cfg.Progress, "measuring %s: %d repetition(s) × %d tests × %v, paths interleaved (about %v)\n",
		joinNames(cfg.Paths), cfg.Repetitions, len(r.tests), cfg.Duration, r.estimate().Round(time.Second))
	skip := map[PathID]bool{}
	var failed []string
	for rep := 1; rep <= cfg.Repetitions; rep++ {
		for i, p := range cfg.Paths {
			if skip[p] {
				r.done += len(r.tests)
				continue
			}
			run, err := r.measure(ctx, p, rep)
			if ctx.Err() != nil {
				return nil, fmt.Errorf("interrupted: %w", ctx.Err())
			}
			if err != nil {
				fmt.Fprintf(cfg.Progress, "rep %d/%d %s FAILED: %v\n", rep, cfg.Repetitions, p.Title(), err)
				res.Paths[i].Errors = append(res.Paths[i].Errors, fmt.Sprintf("repetition %d: %v", rep, err))
				failed = append(failed, string(p))
				if errors.Is(err, errSetup) {
					skip[p] = true
				}
				r.done = (rep-1)*len(cfg.Paths)*len(r.tests) + (i+1)*len(r.tests)
				continue
			}
			res.Paths[i].Runs = append(res.Paths[i].Runs, run)
		}
	}
	res.Finished = time.Now().UTC()
	res.Host.LoadAvgEnd = loadAvg()
	res.summarize()
	if len(failed) > 0 {
		slices.Sort(failed)
		return res, fmt.Errorf("%w: %s", ErrPathFailed, strings.Join(slices.Compact(failed), ", "))
	}
	return res, nil
}

// runner carries the state of one Run across paths and repetitions. Used
// by one goroutine.
type runner struct {
	cfg   Config
	res   *Results
	work  string
	undo  *undoStack  // whole-run cleanup
	tests []test      // the selected tests, in running order
	etcd  *etcdServer // started with the first agent path
	start time.Time
	total int // tests in the whole run
	done  int // tests finished (or skipped)
}

// estimate guesses the remaining time from the tests done so far, or from
// the configured duration before any is done.
func (r *runner) estimate() time.Duration {
	left := r.total - r.done
	if r.done == 0 {
		return time.Duration(left) * (r.cfg.Duration + iperfOmitDuration(r.cfg.Duration) + time.Second)
	}
	return time.Since(r.start) / time.Duration(r.done) * time.Duration(left)
}

func iperfOmitDuration(d time.Duration) time.Duration {
	if len(iperfOmit(d)) > 0 {
		return time.Second
	}
	return 0
}

// setupPath makes path p ready to carry traffic and returns the address
// in node b that the tests target and the agent processes, if any. Path
// teardown goes on undo.
func (r *runner) setupPath(ctx context.Context, p PathID, dir string, undo *undoStack) (netip.Addr, []*process, error) {
	switch p {
	case Underlay:
		return nodes[1].underlay.Addr(), nil, nil
	case KernelVXLAN:
		return nodes[1].vtep(), nil, setupKernelVXLAN(ctx, undo)
	case Floor, FloorB:
		procs, err := startFloor(ctx, r.cfg, p, dir, undo)
		return nodes[1].vtep(), procs, err
	case Overlay, OverlayB, OverlayNaive:
		if r.etcd == nil {
			e, err := startEtcd(ctx, r.cfg, r.work, r.undo)
			if err != nil {
				return netip.Addr{}, nil, err
			}
			r.etcd = e
			r.res.Host.EtcdDescription = e.desc
		}
		got, procs, err := startAgents(ctx, r.cfg, r.etcd, p, dir, undo)
		return got[1].vtep(), procs, err
	}
	return netip.Addr{}, nil, fmt.Errorf("unknown path %q", p)
}

// measure sets path p up, runs every test on it once, and tears it down.
func (r *runner) measure(ctx context.Context, p PathID, rep int) (run Repetition, err error) {
	cfg := r.cfg
	undo := &undoStack{log: cfg.Logger}
	defer func() {
		if cerr := undo.run(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	dir := filepath.Join(r.work, fmt.Sprintf("rep%d-%s", rep, p))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return run, err
	}
	fmt.Fprintf(cfg.Progress, "rep %d/%d %s: setting up\n", rep, cfg.Repetitions, p.Title())
	target, agents, err := r.setupPath(ctx, p, dir, undo)
	if err != nil {
		return run, fmt.Errorf("%w: %s: %w", errSetup, p, err)
	}
	srv, err := startServers(ctx, target, cfg.appCPU(p, 1), dir, undo)
	if err != nil {
		return run, fmt.Errorf("%w: %s: servers: %w", errSetup, p, err)
	}
	pids := make([]int, len(agents))
	for i, a := range agents {
		pids[i] = a.pid()
	}
	alive := func() error {
		for _, a := range agents {
			if a.exited() {
				return a.exitError()
			}
		}
		return srv.alive()
	}

	run = Repetition{Rep: rep, Values: map[string]float64{}}
	for _, t := range r.tests {
		time.Sleep(settle)
		before, err := sampleCPU(pids)
		if err != nil {
			return run, errors.Join(fmt.Errorf("%s: CPU sample: %w", t.title, err), alive())
		}
		vals, terr := t.run(ctx, testEnv{target: target, d: cfg.Duration, cpu: cfg.appCPU(p, 0)})
		after, err := sampleCPU(pids)
		if terr != nil || err != nil {
			return run, fmt.Errorf("%s: %w", t.title, errors.Join(terr, err, alive()))
		}
		machine, agentCores := after.coresSince(before)
		s := TestSample{Test: t.id, Seconds: after.at.Sub(before.at).Seconds(), MachineCores: machine,
			KernelCores: after.kernelCoresSince(before), Values: vals}
		if len(agents) > 0 {
			s.AgentCores = &agentCores
		}
		run.Tests = append(run.Tests, s)
		for k, v := range vals {
			run.Values[k] = v
		}
		if t.cpuMachine != "" {
			run.Values[t.cpuMachine] = machine
		}
		if t.cpuAgents != "" && len(agents) > 0 {
			run.Values[t.cpuAgents] = agentCores
		}
		if t.cpuPerGB != "" {
			// The datapath's CPU: the relays', or the kernel's where the
			// kernel is the datapath.
			cores := s.KernelCores
			if p.Relay() {
				cores = agentCores
			}
			if v := cpuPerGB(cores, vals[t.gbps]); v > 0 {
				run.Values[t.cpuPerGB] = v
			}
		}
		r.done++
		r.progress(rep, p, t, s)
	}
	if len(agents) > 0 {
		var peak uint64
		for _, pid := range pids {
			kib, err := procStatusKiB(pid, "VmHWM")
			if err != nil {
				return run, errors.Join(fmt.Errorf("agent memory: %w", err), alive())
			}
			peak = max(peak, kib)
		}
		run.Values[MetricAgentRSS] = float64(peak) / 1024
	}
	return run, nil
}

// progress prints one line per finished test.
func (r *runner) progress(rep int, p PathID, t test, s TestSample) {
	var fig string
	switch t.id {
	case "tcp1", "tcp4":
		fig = fmt.Sprintf("%6.2f Gbit/s", s.Values[MetricTCP1]+s.Values[MetricTCP4])
	case "udp64":
		fig = fmt.Sprintf("%s delivered, %.1f%% lost", formatWithUnit(mustMetric(MetricUDP64PPS), s.Values[MetricUDP64PPS]), s.Values[MetricUDP64Loss])
	case "rtt":
		fig = fmt.Sprintf("p50 %.1f µs, p99 %.1f µs", s.Values[MetricRTTP50], s.Values[MetricRTTP99])
	}
	cpu := fmt.Sprintf("machine %.2f cores", s.MachineCores)
	if s.AgentCores != nil {
		cpu += fmt.Sprintf(", agents %.2f", *s.AgentCores)
	}
	fmt.Fprintf(r.cfg.Progress, "[%*d/%d, ~%v left] rep %d/%d %-16s %-14s %-34s %s\n",
		len(fmt.Sprint(r.total)), r.done, r.total, r.estimate().Round(time.Second),
		rep, r.cfg.Repetitions, p.Title(), t.title, fig, cpu)
}

func mustMetric(id string) Metric {
	m, ok := MetricByID(id)
	if !ok {
		panic("unknown metric " + id)
	}
	return m
}

// copyLogs copies every *.log file under src to the same relative path
// under dst.
func copyLogs(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".log") {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		out := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		return os.WriteFile(out, b, 0o644)
	})
}
