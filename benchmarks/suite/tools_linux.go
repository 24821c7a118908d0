package suite

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Load generator settings.
const (
	iperfPort    = 5201
	sockperfPort = 11111
	udpPayload   = 64 // iperf3 -l for the packet-rate test
	pingPongSize = 64 // sockperf -m
	// toolSlack is added to a test's duration for its timeout: process
	// start, connection setup, warm-up and the final exchange of results.
	toolSlack = 25 * time.Second
)

// ensureTools checks for iperf3 and sockperf and installs the missing ones
// with apt-get when allowed.
func ensureTools(ctx context.Context, cfg Config) error {
	var missing []string
	for _, t := range []string{"iperf3", "sockperf", "ip", "bridge", "ping", "ss", "taskset"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	pkgs := map[string]string{"iperf3": "iperf3", "sockperf": "sockperf", "ip": "iproute2", "bridge": "iproute2", "ss": "iproute2", "ping": "iputils-ping", "taskset": "util-linux"}
	var need []string
	for _, t := range missing {
		if p := pkgs[t]; !slices.Contains(need, p) {
			need = append(need, p)
		}
	}
	hint := "apt-get install -y --no-install-recommends " + strings.Join(need, " ")
	if _, err := exec.LookPath("apt-get"); err != nil || !cfg.Install {
		return fmt.Errorf("missing %s: install with `sudo %s` (Debian/Ubuntu; the package names are the same on Fedora with dnf), or let the suite install them (--install)",
			strings.Join(missing, ", "), hint)
	}
	fmt.Fprintf(cfg.Progress, "installing %s: %s\n", strings.Join(missing, ", "), hint)
	if _, err := runTool(ctx, "", 5*time.Minute, "apt-get", "update", "-qq"); err != nil {
		return fmt.Errorf("install %s: %w", strings.Join(need, " "), err)
	}
	args := append([]string{"env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq", "--no-install-recommends"}, need...)
	if _, err := runTool(ctx, "", 10*time.Minute, args...); err != nil {
		return fmt.Errorf("install %s: %w", strings.Join(need, " "), err)
	}
	return nil
}

// toolVersion returns the version a tool prints, e.g. "3.12" for iperf3.
func toolVersion(ctx context.Context, argv ...string) string {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unknown"
	}
	return versionOf(firstLine(out))
}

// servers are the iperf3 and sockperf servers of one path measurement.
type servers struct {
	iperf, sockperf *process
}

// startServers starts iperf3 and sockperf servers bound to target in node
// b and waits until both listen; undo stops them.
// With cpu >= 0 both servers are pinned to that CPU.
func startServers(ctx context.Context, target netip.Addr, cpu int, dir string, undo *undoStack) (*servers, error) {
	b := nodes[1].ns
	ip, err := startProcess("iperf3 server", b, filepath.Join(dir, "iperf3-server.log"),
		onCPU(cpu, "iperf3", "-s", "-B", target.String(), "-p", strconv.Itoa(iperfPort), "--idle-timeout", "60")...)
	if err != nil {
		return nil, err
	}
	undo.push("stop iperf3 server", ip.stop)
	sp, err := startProcess("sockperf server", b, filepath.Join(dir, "sockperf-server.log"),
		onCPU(cpu, "sockperf", "server", "-i", target.String(), "-p", strconv.Itoa(sockperfPort))...)
	if err != nil {
		return nil, err
	}
	undo.push("stop sockperf server", sp.stop)
	if err := waitListening(ctx, b, "-t", iperfPort, ip); err != nil {
		return nil, err
	}
	if err := waitListening(ctx, b, "-u", sockperfPort, sp); err != nil {
		return nil, err
	}
	return &servers{iperf: ip, sockperf: sp}, nil
}

// alive returns an error if a server has exited.
func (s *servers) alive() error {
	for _, p := range []*process{s.iperf, s.sockperf} {
		if p.exited() {
			return p.exitError()
		}
	}
	return nil
}

// waitListening polls ss in namespace ns until a socket listens on port
// (proto "-t" or "-u").
func waitListening(ctx context.Context, ns, proto string, port int, p *process) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := runTool(ctx, ns, 5*time.Second, "ss", "-H", "-l", "-n", proto, "sport = :"+strconv.Itoa(port))
		if err == nil && strings.TrimSpace(string(out)) != "" {
			return nil
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case p.exited():
			return p.exitError()
		case time.Now().After(deadline):
			return fmt.Errorf("%s does not listen on port %d after 15s; last log lines:\n%s", p.name, port, p.logTail(10))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// test is one measurement of a path.
type test struct {
	id    string // one of AllTests
	title string
	// cpuMachine and cpuAgents name the metrics that receive this test's
	// machine and agent CPU; empty when the CPU of this test is kept only
	// in the raw samples.
	cpuMachine, cpuAgents string
	// cpuPerGB names the metric that receives the datapath's CPU per GB
	// moved, computed from the throughput metric gbps; empty for tests
	// that move no bulk data.
	cpuPerGB, gbps string
	run            func(ctx context.Context, e testEnv) (map[string]float64, error)
}

// testEnv is what a test's client needs: the server's address, the test's
// duration, and the CPU to pin the client to (-1: none).
type testEnv struct {
	target netip.Addr
	d      time.Duration
	cpu    int
}

// onCPU prefixes argv with taskset when cpu >= 0, so the program runs
// pinned to that CPU (Config.AppCPUs).
func onCPU(cpu int, argv ...string) []string {
	if cpu < 0 {
		return argv
	}
	return append([]string{"taskset", "-c", strconv.Itoa(cpu)}, argv...)
}

// tests run in this order (AllTests's) on every path.
var tests = []test{
	{id: TestTCP1, title: "TCP 1 stream", cpuMachine: MetricCPUMachTCP1, cpuAgents: MetricCPUAgentTCP1,
		cpuPerGB: MetricCPUGBTCP1, gbps: MetricTCP1,
		run: func(ctx context.Context, e testEnv) (map[string]float64, error) {
			return iperfTCP(ctx, e, 1, MetricTCP1)
		}},
	{id: TestTCP4, title: "TCP 4 streams", cpuPerGB: MetricCPUGBTCP4, gbps: MetricTCP4,
		run: func(ctx context.Context, e testEnv) (map[string]float64, error) {
			return iperfTCP(ctx, e, 4, MetricTCP4)
		}},
	{id: TestUDP64, title: "UDP 64 B", cpuMachine: MetricCPUMachUDP64, cpuAgents: MetricCPUAgentUDP64, run: iperfUDP},
	{id: TestRTT, title: "UDP ping-pong", run: sockperfPingPong},
}

// iperfOmit returns iperf3's -O (seconds of slow start left out of the
// figures) for a test of d: one second once tests are long enough for it
// not to dominate.
func iperfOmit(d time.Duration) []string {
	if d >= 5*time.Second {
		return []string{"-O", "1"}
	}
	return nil
}

// runIperf runs an iperf3 client in node a against target and returns its
// -J output. iperf3 reports its own errors in the JSON, so the JSON error
// wins over the exit status.
func runIperf(ctx context.Context, e testEnv, extra ...string) ([]byte, error) {
	argv := onCPU(e.cpu, "iperf3", "-c", e.target.String(), "-p", strconv.Itoa(iperfPort),
		"-t", strconv.Itoa(int(e.d/time.Second)), "-J", "--connect-timeout", "5000")
	argv = append(append(argv, iperfOmit(e.d)...), extra...)
	out, err := runTool(ctx, nodes[0].ns, e.d+toolSlack, argv...)
	if err != nil {
		if _, jerr := decodeIperf(out); jerr != nil && !errors.Is(jerr, errParse) {
			return out, jerr
		}
	}
	return out, err
}

func iperfTCP(ctx context.Context, e testEnv, streams int, metric string) (map[string]float64, error) {
	out, err := runIperf(ctx, e, "-P", strconv.Itoa(streams))
	if err != nil {
		return nil, err
	}
	gbps, err := parseIperfTCP(out)
	if err != nil {
		return nil, err
	}
	return map[string]float64{metric: gbps}, nil
}

func iperfUDP(ctx context.Context, e testEnv) (map[string]float64, error) {
	out, err := runIperf(ctx, e, "-u", "-b", "0", "-l", strconv.Itoa(udpPayload))
	if err != nil {
		return nil, err
	}
	r, err := parseIperfUDP(out)
	if err != nil {
		return nil, err
	}
	return map[string]float64{MetricUDP64PPS: r.PPS, MetricUDP64Loss: r.LossPct}, nil
}

func sockperfPingPong(ctx context.Context, e testEnv) (map[string]float64, error) {
	out, err := runTool(ctx, nodes[0].ns, e.d+toolSlack, onCPU(e.cpu, "sockperf", "ping-pong", "-i", e.target.String(),
		"-p", strconv.Itoa(sockperfPort), "-t", strconv.Itoa(int(e.d/time.Second)), "-m", strconv.Itoa(pingPongSize), "--full-rtt")...)
	if err != nil {
		return nil, err
	}
	r, err := parseSockperf(out)
	if err != nil {
		return nil, err
	}
	return map[string]float64{MetricRTTP50: r.P50, MetricRTTP99: r.P99}, nil
}

// hostInfo describes the machine for the report.
func hostInfo(ctx context.Context, cfg Config) Host {
	h := Host{LoadAvgStart: loadAvg()}
	h.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				h.CPUModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if s, err := sampleCPU(nil); err == nil {
		h.CPUs = s.ncpu
	}
	h.IPerf3 = toolVersion(ctx, "iperf3", "--version")
	h.Sockperf = toolVersion(ctx, "sockperf", "--version")
	if cfg.OverlayBin != "" {
		if out, err := runTool(ctx, "", 10*time.Second, cfg.OverlayBin, "version"); err == nil {
			h.OverlayVersion = strings.TrimPrefix(firstLine(out), "overlay ")
		}
	}
	return h
}
