// Command overlay-bench runs the throughput comparison suite: the plain
// underlay, kernel VXLAN configured as flannel configures flannel.1, the
// floor relay (`overlay-bench floor-relay`, package benchmarks/floor),
// `overlay up` with default settings and `overlay up --naive`, measured in
// the same run between two network namespaces, and writes results.json,
// results.md and chart.svg.
//
// Usage (as root, after `make build`):
//
//	overlay-bench --overlay bin/overlay                 # 3 repetitions × 10 s per test
//	overlay-bench --overlay bin/overlay --quick         # 1 s per test, 1 repetition
//	overlay-bench --paths underlay,kernel-vxlan --quick # no agent needed
//	overlay-bench --paths overlay --tests rtt --reps 5  # one test of one path
//	overlay-bench --paths overlay --overlay-b /tmp/overlay-new --tests rtt  # A/B of two builds
//
// First it probes the platform (--probe): the cost of a system call and of
// waking a process, for C (sockperf) and Go processes; see
// benchmarks/README.md.
//
// It exits 0 when every path was measured (missed targets are reported,
// never fatal), 1 when a path could not be set up or measured, 2 on bad
// flags and 130 when interrupted; every namespace and process it created
// is removed in all cases.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"overlay/benchmarks/floor"
	"overlay/benchmarks/suite"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == suite.EchoArg {
		// The platform probe's Go echo server (suite.Config.EchoCommand).
		if err := suite.ServeEcho(os.Args[2]); err != nil {
			fmt.Fprintf(os.Stderr, "overlay-bench: %v\n", err)
		}
		os.Exit(1)
	}
	if len(os.Args) > 1 && os.Args[1] == floor.Arg {
		// The floor path's relay (suite.Config.FloorCommand).
		os.Exit(floor.Command(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("overlay-bench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: overlay-bench [flags]\n\n"+
			"Measures underlay, kernel VXLAN, the floor relay, overlay and overlay --naive between\ntwo network "+
			"namespaces (needs root) and writes results.json, results.md and chart.svg.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var (
		paths        = fs.String("paths", "all", "comma-separated paths to measure: "+pathNames()+", or all")
		tests        = fs.String("tests", "all", "comma-separated tests to run on every path: "+strings.Join(suite.AllTests, ",")+", or all")
		probe        = fs.Bool("probe", true, "first measure the platform: a system call, and UDP ping-pong between C and between Go processes")
		reps         = fs.Int("reps", 3, "repetitions of every path (paths are interleaved within a repetition)")
		duration     = fs.Duration("duration", 10*time.Second, "duration of every test, whole seconds")
		quick        = fs.Bool("quick", false, "smoke run: 1 s per test, 1 repetition (overrides --reps and --duration)")
		overlay      = fs.String("overlay", "bin/overlay", "the overlay binary (make build)")
		overlayB     = fs.String("overlay-b", "", "a second overlay binary, measured as path overlay-b in the same run (adds it to --paths): an A/B comparison of two builds")
		etcd         = fs.String("etcd", "", "another etcd server for the agent paths (default: the overlay binary's own etcd command)")
		tunDriver    = fs.String("tun-driver", "", "--tun-driver for the default overlay path (auto, offload, plain; default: the agent's)")
		out          = fs.String("out", "", "results directory (default benchmarks/results/<UTC time> in a source tree, else overlay-bench-<UTC time>)")
		install      = fs.Bool("install", true, "install missing iperf3/sockperf with apt-get")
		keepLogs     = fs.Bool("keep-logs", false, "copy the logs of the agents, etcd and the servers into <out>/logs")
		verbose      = fs.Bool("v", false, "log setup and cleanup steps")
		overlayArgs  = fs.String("overlay-args", "", "extra flags for `overlay up` on path overlay, space-separated (see `overlay up --help`)")
		overlayArgsB = fs.String("overlay-b-args", "", "flags for `overlay up` on path overlay-b, space-separated (adds overlay-b to --paths; its binary is --overlay-b, else --overlay): an A/B comparison of two agent settings")
		floorArgs    = fs.String("floor-args", "", "extra flags for the floor relay of path floor, space-separated (see overlay-bench floor-relay --help)")
		floorArgsB   = fs.String("floor-b-args", "", "flags for the floor relay of path floor-b, space-separated (adds floor-b to --paths): an A/B comparison of two floor settings")
		appCPUs      = fs.String("app-cpus", "", "pin the load: CLIENT,SERVER CPUs for iperf3/sockperf clients (node a) and servers (node b), with taskset (default: the scheduler places them)")
		appCPUsB     = fs.String("app-cpus-b", "", "CLIENT,SERVER CPUs of the load on paths overlay-b and floor-b (default: --app-cpus): a placement A/B with --overlay-b set to the same binary")
		render       = fs.String("render", "", "measure nothing: re-render results.md and chart.svg from this results.json, in its directory")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "overlay-bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *render != "" {
		res, err := suite.ReadFile(*render)
		if err == nil {
			err = suite.WriteFiles(filepath.Dir(*render), res)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "overlay-bench: %v\n", err)
			return 1
		}
		fmt.Print(suite.Summary(res))
		return 0
	}
	spec := *paths
	if *overlayB != "" || *overlayArgsB != "" {
		spec += "," + string(suite.OverlayB)
	}
	if *floorArgsB != "" {
		spec += "," + string(suite.FloorB)
	}
	ps, err := suite.ParsePaths(spec)
	if err != nil {
		fmt.Fprintf(os.Stderr, "overlay-bench: --paths: %v\n", err)
		return 2
	}
	ts, err := suite.ParseTests(*tests)
	if err != nil {
		fmt.Fprintf(os.Stderr, "overlay-bench: --tests: %v\n", err)
		return 2
	}
	cpus, err := parseCPUs(*appCPUs)
	if err != nil {
		fmt.Fprintf(os.Stderr, "overlay-bench: --app-cpus: %v\n", err)
		return 2
	}
	cpusB, err := parseCPUs(*appCPUsB)
	if err != nil {
		fmt.Fprintf(os.Stderr, "overlay-bench: --app-cpus-b: %v\n", err)
		return 2
	}
	dir := *out
	if dir == "" {
		dir = defaultOutDir(time.Now())
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg := suite.Config{
		Paths:        ps,
		Tests:        ts,
		Probe:        *probe,
		Repetitions:  *reps,
		Duration:     *duration,
		Quick:        *quick,
		OverlayBin:   *overlay,
		OverlayBinB:  *overlayB,
		EtcdBin:      *etcd,
		TUNDriver:    *tunDriver,
		FloorArgs:    strings.Fields(*floorArgs),
		FloorArgsB:   strings.Fields(*floorArgsB),
		OverlayArgs:  strings.Fields(*overlayArgs),
		OverlayArgsB: strings.Fields(*overlayArgsB),
		AppCPUs:      cpus,
		AppCPUsB:     cpusB,
		OutDir:       dir,
		Install:      *install,
		KeepLogs:     *keepLogs,
		Command:      commandLine(args),
		Progress:     os.Stderr,
		Logger:       logger,
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := suite.Run(ctx, cfg)
	if ctx.Err() != nil {
		fmt.Fprintf(os.Stderr, "overlay-bench: interrupted; everything the suite created has been removed\n")
		if err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintf(os.Stderr, "overlay-bench: %v\n", err)
		}
		return 130
	}
	if res == nil {
		fmt.Fprintf(os.Stderr, "overlay-bench: %v\n", err)
		if errors.Is(err, suite.ErrNotRoot) {
			fmt.Fprintf(os.Stderr, "overlay-bench: run it as root, e.g. sudo make bench\n")
		}
		return 1
	}
	if werr := suite.WriteFiles(dir, res); werr != nil {
		fmt.Fprintf(os.Stderr, "overlay-bench: %v\n", werr)
		return 1
	}
	md, _ := os.ReadFile(filepath.Join(dir, suite.FileMarkdown))
	fmt.Printf("\n%s\n%s", md, suite.Summary(res))
	fmt.Printf("results: %s (%s, %s, %s)\n", dir, suite.FileJSON, suite.FileMarkdown, suite.FileChart)
	if err != nil {
		fmt.Fprintf(os.Stderr, "overlay-bench: %v\n", err)
		return 1
	}
	return 0
}

func pathNames() string {
	s := make([]string, len(suite.AllPaths))
	for i, p := range suite.AllPaths {
		s[i] = string(p)
	}
	return strings.Join(s, ",")
}

// defaultOutDir puts results next to the committed ones when run from the
// source tree.
func defaultOutDir(now time.Time) string {
	stamp := now.UTC().Format("20060102-150405Z")
	if st, err := os.Stat(filepath.Join("benchmarks", "results")); err == nil && st.IsDir() {
		return filepath.Join("benchmarks", "results", stamp)
	}
	return "overlay-bench-" + stamp
}

// commandLine renders the invocation for the results, shell-quoted where
// needed.
func commandLine(args []string) string {
	parts := []string{"overlay-bench"}
	for _, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"$`\\*?[]{}();&|<>") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// parseCPUs parses "CLIENT,SERVER" CPU numbers; "" is nil (no pinning).
func parseCPUs(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var cpus []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q: want CLIENT,SERVER CPU numbers", s)
		}
		cpus = append(cpus, n)
	}
	return cpus, nil
}
