package suite

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"time"
)

// PathID names one datapath the suite measures.
type PathID string

// The paths, in the order a repetition measures them.
const (
	Underlay     PathID = "underlay"      // the veth pair itself
	KernelVXLAN  PathID = "kernel-vxlan"  // flannel.1 as flannel's vxlan backend configures it
	Overlay      PathID = "overlay"       // overlay up --backend=userspace, default settings
	OverlayNaive PathID = "overlay-naive" // overlay up --backend=userspace --naive
	// OverlayB is `overlay up` from a second binary (Config.OverlayBinB),
	// or from the same one with other flags (Config.OverlayArgsB), to
	// compare two builds or two settings of the agent in one run.
	OverlayB PathID = "overlay-b"
	// Floor is the benchmark floor (package benchmarks/floor): a relay
	// with the agent's system-call structure and none of its logic, in
	// each node.
	Floor PathID = "floor"
	// FloorB is the floor relay with other flags (Config.FloorArgsB), to
	// compare two settings of the floor in one run.
	FloorB PathID = "floor-b"
)

// AllPaths lists every path in measuring order: what "all" selects.
var AllPaths = []PathID{Underlay, KernelVXLAN, Floor, Overlay, OverlayNaive}

// knownPaths is every path in measuring order, the optional ones included.
var knownPaths = []PathID{Underlay, KernelVXLAN, Floor, FloorB, Overlay, OverlayB, OverlayNaive}

// Title is the path's name for people (tables, chart legend).
func (p PathID) Title() string {
	switch p {
	case Underlay:
		return "underlay (veth)"
	case KernelVXLAN:
		return "kernel VXLAN"
	case Overlay:
		return "overlay"
	case OverlayNaive:
		return "overlay --naive"
	case OverlayB:
		return "overlay B"
	case Floor:
		return "floor"
	case FloorB:
		return "floor B"
	}
	return string(p)
}

// Agent reports whether the path runs `overlay up` agents, whose CPU and
// memory the suite then reports.
func (p PathID) Agent() bool { return p == Overlay || p == OverlayB || p == OverlayNaive }

// Relay reports whether the path runs a userspace relay in each node (the
// agents or the floor relay), whose CPU and memory the suite reports.
func (p PathID) Relay() bool { return p.Agent() || p == Floor || p == FloorB }

// ParsePaths parses a comma-separated list of path names ("all" for
// AllPaths), keeping measuring order and dropping duplicates.
func ParsePaths(s string) ([]PathID, error) {
	return parseList(s, "path", AllPaths, knownPaths)
}

// parseList parses a comma-separated list of names from known, in which
// "all" stands for every name of all. The result keeps known's order,
// without duplicates, and is never empty.
func parseList[T ~string](s, what string, all, known []T) ([]T, error) {
	want := map[T]bool{}
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		switch {
		case f == "":
		case f == "all":
			for _, v := range all {
				want[v] = true
			}
		case slices.Contains(known, T(f)):
			want[T(f)] = true
		default:
			return nil, fmt.Errorf("unknown %s %q (known: %s, or all)", what, f, joinNames(known))
		}
	}
	var out []T
	for _, v := range known {
		if want[v] {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %s in %q (known: %s, or all)", what, s, joinNames(known))
	}
	return out, nil
}

func joinNames[T ~string](vs []T) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = string(v)
	}
	return strings.Join(s, ",")
}

// The tests, in the order every path runs them.
const (
	TestTCP1  = "tcp1"  // iperf3, one TCP stream
	TestTCP4  = "tcp4"  // iperf3, four TCP streams
	TestUDP64 = "udp64" // iperf3, 64-byte UDP datagrams at the sender's full speed
	TestRTT   = "rtt"   // sockperf UDP ping-pong
)

// AllTests lists every test in running order.
var AllTests = []string{TestTCP1, TestTCP4, TestUDP64, TestRTT}

// ParseTests parses a comma-separated list of test names ("all" for every
// test), keeping running order and dropping duplicates.
func ParseTests(s string) ([]string, error) {
	return parseList(s, "test", AllTests, AllTests)
}

// Config is what one suite run measures and where it reports. The zero
// value is not usable: OutDir is required, and OverlayBin when an agent
// path is selected. A Config is read-only once passed to Run.
type Config struct {
	// Paths to measure; nil means AllPaths.
	Paths []PathID
	// Tests to run on every path; nil means AllTests.
	Tests []string
	// Probe measures, once per run, what bounds any userspace datapath on
	// the machine: the cost of a system call and of waking a process, for
	// a C program (sockperf) and for a Go one (see Platform).
	Probe bool
	// EchoCommand is the argv prefix of a Go program that serves the
	// probe's UDP echo when given EchoArg and an address (ServeEcho). Nil
	// means this executable.
	EchoCommand []string
	// FloorCommand is the argv prefix of a program that runs the floor
	// relay when given floor.Arg and its flags (floor.Command). Nil means
	// this executable.
	FloorCommand []string
	// FloorArgs are extra flags for the floor relay of path floor, and
	// FloorArgsB those of path floor-b (see `overlay-bench floor-relay
	// --help`): how the floor is tuned.
	FloorArgs, FloorArgsB []string
	// AppCPUs, when set, pins the applications that load the paths: the
	// clients (iperf3 -c, sockperf ping-pong, in node a) to AppCPUs[0],
	// the servers (node b) to AppCPUs[1], with taskset. Nil leaves their
	// placement to the scheduler.
	AppCPUs []int
	// AppCPUsB, when set, is the placement for paths overlay-b and
	// floor-b instead of AppCPUs: placement A/B'd in one run, with the same
	// binary or relay flags on both paths.
	AppCPUsB []int
	// Repetitions of every path; 0 means 3.
	Repetitions int
	// Duration of every test; 0 means 10 s.
	Duration time.Duration
	// Quick sets Duration to 1 s and Repetitions to 1: the CI smoke run.
	Quick bool
	// OverlayBin is the `overlay` binary (bin/overlay after `make build`).
	OverlayBin string
	// OverlayBinB is the agent of path overlay-b: another build of
	// `overlay`, measured against OverlayBin in the same run. Empty
	// with OverlayArgsB set means OverlayBin.
	OverlayBinB string
	// OverlayArgs are extra flags for `overlay up` on path overlay, and
	// OverlayArgsB those of path overlay-b: an A/B of two agent settings
	// (`overlay up --help`, category datapath).
	OverlayArgs, OverlayArgsB []string
	// EtcdBin is another etcd server for the agent paths, taking etcd's
	// own flags. Empty means `<OverlayBin> etcd`, so no etcd need be
	// installed.
	EtcdBin string
	// TUNDriver, when set, is passed to the default overlay path as
	// --tun-driver (auto, offload or plain).
	TUNDriver string
	// OutDir receives results.json, results.md and chart.svg. Required.
	OutDir string
	// KeepLogs copies the logs of every process the suite ran (agents,
	// etcd, servers) into OutDir/logs.
	KeepLogs bool
	// Install lets the suite install missing iperf3/sockperf with apt-get
	// (root, Debian-like systems). Without it a missing tool is an error
	// that names the command to run.
	Install bool
	// Command is the command line recorded in the results, so a reader can
	// reproduce them.
	Command string
	// Progress receives one line per test while the suite runs; nil
	// discards them.
	Progress io.Writer
	// Logger receives setup and teardown details; nil discards them.
	Logger *slog.Logger
}

// errConfig is wrapped by every configuration error Run returns before it
// touches the system; the caller should fix its flags.
var errConfig = errors.New("bad benchmark configuration")

// appCPU is the CPU the clients (side 0) or the servers (side 1) of path
// p are pinned to, or -1.
func (c Config) appCPU(p PathID, side int) int {
	cpus := c.AppCPUs
	if c.AppCPUsB != nil && (p == OverlayB || p == FloorB) {
		cpus = c.AppCPUsB
	}
	if cpus == nil {
		return -1
	}
	return cpus[side]
}

func (c Config) withDefaults() (Config, error) {
	if c.Paths == nil {
		c.Paths = slices.Clone(AllPaths)
	}
	if c.Tests == nil {
		c.Tests = slices.Clone(AllTests)
	}
	if c.Quick {
		c.Repetitions, c.Duration = 1, time.Second
	}
	if c.Repetitions == 0 {
		c.Repetitions = 3
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case len(c.Paths) == 0:
		return c, fmt.Errorf("%w: no paths", errConfig)
	case len(c.Tests) == 0:
		return c, fmt.Errorf("%w: no tests", errConfig)
	case c.Repetitions < 1 || c.Repetitions > 100:
		return c, fmt.Errorf("%w: repetitions %d not in 1..100", errConfig, c.Repetitions)
	case c.Duration < time.Second || c.Duration > time.Hour:
		return c, fmt.Errorf("%w: test duration %v not in 1s..1h (iperf3 counts whole seconds)", errConfig, c.Duration)
	case c.Duration%time.Second != 0:
		return c, fmt.Errorf("%w: test duration %v is not whole seconds (iperf3 and sockperf count whole seconds)", errConfig, c.Duration)
	case c.OutDir == "":
		return c, fmt.Errorf("%w: no output directory", errConfig)
	}
	for _, cpus := range [][]int{c.AppCPUs, c.AppCPUsB} {
		if cpus == nil {
			continue
		}
		if len(cpus) != 2 {
			return c, fmt.Errorf("%w: application CPUs %v: want two, the clients' and the servers'", errConfig, cpus)
		}
		for _, cpu := range cpus {
			if cpu < 0 || cpu >= runtime.NumCPU() {
				return c, fmt.Errorf("%w: application CPU %d not in 0..%d", errConfig, cpu, runtime.NumCPU()-1)
			}
		}
	}
	switch c.TUNDriver {
	case "", "auto", "offload", "plain":
	default:
		return c, fmt.Errorf("%w: TUN driver %q (want auto, offload or plain)", errConfig, c.TUNDriver)
	}
	for _, t := range c.Tests {
		if !slices.Contains(AllTests, t) {
			return c, fmt.Errorf("%w: unknown test %q", errConfig, t)
		}
	}
	for _, p := range c.Paths {
		if !slices.Contains(knownPaths, p) {
			return c, fmt.Errorf("%w: unknown path %q", errConfig, p)
		}
		if p.Agent() && c.OverlayBin == "" {
			return c, fmt.Errorf("%w: path %s needs the overlay binary (build it with `make build`, pass --overlay bin/overlay)", errConfig, p)
		}
		if p == OverlayB && c.OverlayBinB == "" && len(c.OverlayArgsB) > 0 {
			c.OverlayBinB = c.OverlayBin
		}
		if p == OverlayB && c.OverlayBinB == "" {
			return c, fmt.Errorf("%w: path %s needs a second overlay binary (--overlay-b) or its own flags (--overlay-b-args)", errConfig, p)
		}
	}
	return c, nil
}
