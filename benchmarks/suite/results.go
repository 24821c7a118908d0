package suite

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"
)

// SchemaVersion is the version of the results.json layout ([Results]).
// It changes whenever a field changes meaning or disappears.
const SchemaVersion = 1

// Metric IDs: the keys of [PathResult.Summary] and [Repetition.Values].
const (
	MetricTCP1          = "tcp1_gbps"               // iperf3 TCP, 1 stream, Gbit/s at the receiver
	MetricTCP4          = "tcp4_gbps"               // iperf3 TCP, 4 streams, Gbit/s at the receiver
	MetricUDP64PPS      = "udp64_pps"               // iperf3 UDP, 64-byte payloads, unlimited rate: packets/s delivered
	MetricUDP64Loss     = "udp64_loss_pct"          // the same test: % of sent datagrams not delivered
	MetricRTTP50        = "rtt_p50_us"              // sockperf UDP ping-pong round trip, median, µs
	MetricRTTP99        = "rtt_p99_us"              // the same, 99th percentile, µs
	MetricCPUMachTCP1   = "cpu_machine_tcp1_cores"  // whole machine during the 1-stream TCP test, cores
	MetricCPUAgentTCP1  = "cpu_agents_tcp1_cores"   // both agents during the 1-stream TCP test, cores
	MetricCPUMachUDP64  = "cpu_machine_udp64_cores" // whole machine during the UDP 64-byte test, cores
	MetricCPUAgentUDP64 = "cpu_agents_udp64_cores"  // both agents during the UDP 64-byte test, cores
	MetricAgentRSS      = "agent_rss_peak_mib"      // peak resident set (VmHWM) of the larger agent, MiB
	// The datapath's CPU per GB moved, core-seconds per 10^9 bytes: the
	// relays' (agents' or floor relays') CPU on the userspace paths, the
	// machine's system + irq + softirq time on the kernel paths.
	MetricCPUGBTCP1 = "cpu_core_s_per_gb_tcp1"
	MetricCPUGBTCP4 = "cpu_core_s_per_gb_tcp4"
)

// Metric describes one reported figure.
type Metric struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	Unit           string `json:"unit"`
	HigherIsBetter bool   `json:"higher_is_better"`
	// AgentOnly metrics exist only for paths that run agents.
	AgentOnly bool `json:"agent_only,omitempty"`
	// Chart marks the metrics drawn in chart.svg.
	Chart bool `json:"chart,omitempty"`
}

// Metrics lists every metric in report order.
var Metrics = []Metric{
	{ID: MetricTCP1, Name: "TCP, 1 stream", Unit: "Gbit/s", HigherIsBetter: true, Chart: true},
	{ID: MetricTCP4, Name: "TCP, 4 streams", Unit: "Gbit/s", HigherIsBetter: true, Chart: true},
	{ID: MetricUDP64PPS, Name: "UDP 64 B, delivered", Unit: "packets/s", HigherIsBetter: true, Chart: true},
	{ID: MetricUDP64Loss, Name: "UDP 64 B, loss", Unit: "%"},
	{ID: MetricRTTP50, Name: "round trip p50", Unit: "µs", Chart: true},
	{ID: MetricRTTP99, Name: "round trip p99", Unit: "µs", Chart: true},
	{ID: MetricCPUMachTCP1, Name: "CPU, machine, TCP 1 stream", Unit: "cores"},
	{ID: MetricCPUAgentTCP1, Name: "CPU, agents, TCP 1 stream", Unit: "cores", AgentOnly: true},
	{ID: MetricCPUMachUDP64, Name: "CPU, machine, UDP 64 B", Unit: "cores"},
	{ID: MetricCPUAgentUDP64, Name: "CPU, agents, UDP 64 B", Unit: "cores", AgentOnly: true},
	{ID: MetricAgentRSS, Name: "agent memory, peak RSS", Unit: "MiB", AgentOnly: true},
	{ID: MetricCPUGBTCP1, Name: "CPU per GB, TCP 1 stream", Unit: "core·s/GB", Chart: true},
	{ID: MetricCPUGBTCP4, Name: "CPU per GB, TCP 4 streams", Unit: "core·s/GB"},
}

// cpuPerGB is the CPU cost of moving data: cores busy while gbps Gbit/s
// flowed, as core-seconds per 10^9 bytes. Zero when nothing flowed.
func cpuPerGB(cores, gbps float64) float64 {
	if gbps <= 0 {
		return 0
	}
	return cores / (gbps / 8)
}

// MetricByID returns the metric with the given ID.
func MetricByID(id string) (Metric, bool) {
	i := slices.IndexFunc(Metrics, func(m Metric) bool { return m.ID == id })
	if i < 0 {
		return Metric{}, false
	}
	return Metrics[i], true
}

// metricsFor lists the metric IDs a path reports.
func metricsFor(p PathID) []string {
	var ids []string
	for _, m := range Metrics {
		if !m.AgentOnly || p.Relay() {
			ids = append(ids, m.ID)
		}
	}
	return ids
}

// Results is the whole outcome of one suite run: the content of
// results.json. Plain data; safe to share once Run has returned it.
type Results struct {
	Schema   int       `json:"schema"`
	Command  string    `json:"command"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Host     Host      `json:"host"`
	Settings Settings  `json:"settings"`
	Metrics  []Metric  `json:"metrics"`
	// Paths in measuring order.
	Paths []PathResult `json:"paths"`
	// Ratios holds, per path, median(path) / median(kernel VXLAN) for
	// every metric both report. Absent when kernel VXLAN was not measured.
	Ratios map[PathID]map[string]float64 `json:"ratios_vs_kernel_vxlan,omitempty"`
	// Targets are issue #7's goals for the datapath, judged on medians.
	Targets []Verdict `json:"targets"`
	// Floor compares kernel VXLAN, the floor and the overlay side by side
	// (issue #14), when the floor was measured.
	Floor *FloorReport `json:"floor,omitempty"`
	// Bars are issue #14's bars, judged on medians, when the floor was
	// measured.
	Bars []Verdict `json:"bars_issue14,omitempty"`
	// Platform is the probe's measurement, when it ran.
	Platform *Platform `json:"platform,omitempty"`
}

// Platform is what bounds a userspace datapath on the machine, measured
// between the two node namespaces over the underlay veth: the cost of one
// system call, and 64-byte UDP ping-pong round trips between two C
// processes (sockperf) and between two Go processes (the Go runtime's
// netpoller, as in the agent). Every round trip wakes two processes; the
// difference between the two is what waking a Go process costs beyond a C
// one.
type Platform struct {
	SyscallNs  float64 `json:"syscall_ns"` // getppid(2), best of 5 runs
	Seconds    int     `json:"seconds"`    // of each ping-pong
	CRTTP50    float64 `json:"c_rtt_p50_us"`
	CRTTP99    float64 `json:"c_rtt_p99_us"`
	GoRTTP50   float64 `json:"go_rtt_p50_us"`
	GoRTTP99   float64 `json:"go_rtt_p99_us"`
	GoRounds   int     `json:"go_round_trips"`
	GoTimeouts int     `json:"go_timeouts"`
}

// GoWakeExtra is how much longer waking a Go process takes than waking a
// C one, in µs: half the difference of the two round trips' medians.
func (p *Platform) GoWakeExtra() float64 { return (p.GoRTTP50 - p.CRTTP50) / 2 }

// Host describes the machine and tools of the run.
type Host struct {
	Hostname        string     `json:"hostname"`
	Kernel          string     `json:"kernel"`
	CPUModel        string     `json:"cpu_model"`
	CPUs            int        `json:"cpus"`
	LoadAvgStart    [3]float64 `json:"load_avg_start"`
	LoadAvgEnd      [3]float64 `json:"load_avg_end"`
	IPerf3          string     `json:"iperf3"`
	Sockperf        string     `json:"sockperf"`
	OverlayVersion  string     `json:"overlay_version,omitempty"`
	EtcdDescription string     `json:"etcd,omitempty"`
}

// Settings are the effective settings of the run.
type Settings struct {
	Paths        []PathID `json:"paths"`
	Tests        []string `json:"tests,omitempty"` // absent in files from before tests could be chosen: all
	Repetitions  int      `json:"repetitions"`
	TestSeconds  int      `json:"test_seconds"`
	Quick        bool     `json:"quick"`
	TUNDriver    string   `json:"tun_driver,omitempty"`
	UnderlayMTU  int      `json:"underlay_mtu"`
	OverlayMTU   int      `json:"overlay_mtu"`
	UDPPayload   int      `json:"udp_payload_bytes"`
	PingPongSize int      `json:"pingpong_message_bytes"`
}

// PathResult is one path's figures over all repetitions.
type PathResult struct {
	ID    PathID `json:"id"`
	Title string `json:"title"`
	// Summary has one Stat per metric the path reports, over the
	// repetitions that measured it.
	Summary map[string]Stat `json:"summary"`
	Runs    []Repetition    `json:"runs"`
	// Errors lists why repetitions of this path failed, if any did.
	Errors []string `json:"errors,omitempty"`
}

// Repetition is one repetition of one path.
type Repetition struct {
	Rep int `json:"rep"`
	// Values holds the metric values of this repetition.
	Values map[string]float64 `json:"values"`
	// Tests has the raw figures of each test, CPU included.
	Tests []TestSample `json:"tests"`
}

// TestSample is one test of one repetition.
type TestSample struct {
	Test         string   `json:"test"`
	Seconds      float64  `json:"seconds"`
	MachineCores float64  `json:"machine_cores"`
	AgentCores   *float64 `json:"agent_cores,omitempty"`
	// KernelCores is the machine's system + irq + softirq time, as cores.
	KernelCores float64            `json:"kernel_cores"`
	Values      map[string]float64 `json:"values"`
}

// Stat summarises one metric over repetitions.
type Stat struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Values []float64 `json:"values"`
}

// newStat summarises vs; the median of an even count is the mean of the
// middle two.
func newStat(vs []float64) Stat {
	s := slices.Clone(vs)
	slices.Sort(s)
	st := Stat{Values: slices.Clone(vs)}
	if len(s) == 0 {
		return st
	}
	st.Min, st.Max = s[0], s[len(s)-1]
	if n := len(s); n%2 == 1 {
		st.Median = s[n/2]
	} else {
		st.Median = (s[n/2-1] + s[n/2]) / 2
	}
	return st
}

// Path returns the result of path p, if it was measured.
func (r *Results) Path(p PathID) (*PathResult, bool) {
	for i := range r.Paths {
		if r.Paths[i].ID == p {
			return &r.Paths[i], true
		}
	}
	return nil, false
}

// median returns the median of metric id on path p.
func (r *Results) median(p PathID, id string) (float64, bool) {
	pr, ok := r.Path(p)
	if !ok {
		return 0, false
	}
	st, ok := pr.Summary[id]
	if !ok || len(st.Values) == 0 {
		return 0, false
	}
	return st.Median, true
}

// summarize fills every path's Summary from its runs, then Ratios and
// Targets.
func (r *Results) summarize() {
	for i := range r.Paths {
		pr := &r.Paths[i]
		pr.Summary = map[string]Stat{}
		for _, id := range metricsFor(pr.ID) {
			var vs []float64
			for _, run := range pr.Runs {
				if v, ok := run.Values[id]; ok {
					vs = append(vs, v)
				}
			}
			if len(vs) > 0 {
				pr.Summary[id] = newStat(vs)
			}
		}
	}
	r.Ratios = nil
	if _, ok := r.Path(KernelVXLAN); ok {
		r.Ratios = map[PathID]map[string]float64{}
		for _, pr := range r.Paths {
			if pr.ID == KernelVXLAN {
				continue
			}
			m := map[string]float64{}
			for id := range pr.Summary {
				if v, ok := r.ratio(pr.ID, KernelVXLAN, id); ok {
					m[id] = v
				}
			}
			if len(m) > 0 {
				r.Ratios[pr.ID] = m
			}
		}
	}
	r.Targets = r.judge()
	r.Floor = r.floorReport()
	r.Bars = r.judgeBars()
}

// ratio returns median(a)/median(b) for metric id when both exist and the
// denominator is positive.
func (r *Results) ratio(a, b PathID, id string) (float64, bool) {
	va, ok1 := r.median(a, id)
	vb, ok2 := r.median(b, id)
	if !ok1 || !ok2 || vb <= 0 || math.IsNaN(va) {
		return 0, false
	}
	return va / vb, true
}

// Verdict statuses.
const (
	StatusMet         = "met"
	StatusMissed      = "missed"
	StatusNotMeasured = "not measured"
)

// Verdict is one of issue #7's targets judged on this run's medians.
type Verdict struct {
	Goal string `json:"goal"`
	// Short names the goal in a few words, for the chart.
	Short string `json:"short"`
	// Ratio is the measured ratio of medians (Numerator / Denominator).
	Ratio       float64 `json:"ratio"`
	Numerator   PathID  `json:"numerator"`
	Denominator PathID  `json:"denominator"`
	Metric      string  `json:"metric"`
	// Limit is the bound the ratio must meet: at least Limit when AtMost
	// is false, at most Limit when it is true.
	Limit  float64 `json:"limit"`
	AtMost bool    `json:"at_most,omitempty"`
	// Aim, when set, is the better bound the project aims at.
	Aim    float64 `json:"aim,omitempty"`
	Status string  `json:"status"`
}

// goals are issue #7's targets for the datapath.
var goals = []Verdict{
	{Goal: "single-stream TCP at least 50% of kernel VXLAN (aim 80%)", Short: "TCP-1 vs kernel", Numerator: Overlay, Denominator: KernelVXLAN, Metric: MetricTCP1, Limit: 0.5, Aim: 0.8},
	{Goal: "single-stream TCP at least 10 times the naive mode", Short: "TCP-1 vs naive", Numerator: Overlay, Denominator: OverlayNaive, Metric: MetricTCP1, Limit: 10},
	{Goal: "p50 round trip no more than twice kernel VXLAN's", Short: "p50 RTT vs kernel", Numerator: Overlay, Denominator: KernelVXLAN, Metric: MetricRTTP50, Limit: 2, AtMost: true},
	{Goal: "64-byte packet rate at least 90% of kernel VXLAN's", Short: "64 B pps vs kernel", Numerator: Overlay, Denominator: KernelVXLAN, Metric: MetricUDP64PPS, Limit: 0.9},
}

func (r *Results) judge() []Verdict { return r.judgeGoals(goals) }

// judgeGoals judges each of gs on this run's medians.
func (r *Results) judgeGoals(gs []Verdict) []Verdict {
	out := make([]Verdict, 0, len(gs))
	for _, g := range gs {
		v, ok := r.ratio(g.Numerator, g.Denominator, g.Metric)
		switch {
		case !ok:
			g.Status = StatusNotMeasured
		case g.AtMost && v <= g.Limit, !g.AtMost && v >= g.Limit:
			g.Status = StatusMet
		default:
			g.Status = StatusMissed
		}
		g.Ratio = v
		out = append(out, g)
	}
	return out
}

// String renders the verdict as one line for people.
func (v Verdict) String() string {
	if v.Status == StatusNotMeasured {
		return fmt.Sprintf("[not measured] %s", v.Goal)
	}
	op := "≥"
	if v.AtMost {
		op = "≤"
	}
	s := fmt.Sprintf("[%s] %s: %.2f× (%s %s %s, needs %s %.2f×)", v.Status, v.Goal, v.Ratio,
		v.Numerator, "vs", v.Denominator, op, v.Limit)
	if v.Aim > 0 && v.Status == StatusMet {
		if v.Ratio >= v.Aim {
			s += fmt.Sprintf("; aim %.2f× reached", v.Aim)
		} else {
			s += fmt.Sprintf("; aim %.2f× not yet", v.Aim)
		}
	}
	return s
}

// sortedPaths returns the measured path IDs in measuring order.
func (r *Results) sortedPaths() []PathID {
	ids := make([]PathID, 0, len(r.Paths))
	for _, p := range r.Paths {
		ids = append(ids, p.ID)
	}
	slices.SortStableFunc(ids, func(a, b PathID) int {
		return cmp.Compare(slices.Index(knownPaths, a), slices.Index(knownPaths, b))
	})
	return ids
}
