package suite

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// syntheticResults builds a five-path, three-repetition result whose
// medians are known: overlay reaches 0.6× kernel VXLAN on TCP-1 (met, aim
// not reached), 12× naive (met), 1.5× its p50 (met) and 0.5× its packet
// rate (missed); against the floor 0.75× on TCP-1, 0.93× on TCP-4, 0.8×
// on packets and 1.125× on the p50 round trip.
func syntheticResults() *Results {
	base := map[PathID]map[string]float64{
		Underlay:     {MetricTCP1: 12, MetricTCP4: 14, MetricUDP64PPS: 300e3, MetricUDP64Loss: 5, MetricRTTP50: 20, MetricRTTP99: 60, MetricCPUMachTCP1: 1.9, MetricCPUMachUDP64: 2, MetricCPUGBTCP1: 0.5},
		KernelVXLAN:  {MetricTCP1: 10, MetricTCP4: 11, MetricUDP64PPS: 200e3, MetricUDP64Loss: 10, MetricRTTP50: 24, MetricRTTP99: 70, MetricCPUMachTCP1: 2, MetricCPUMachUDP64: 2, MetricCPUGBTCP1: 0.8},
		Floor:        {MetricTCP1: 8, MetricTCP4: 7.5, MetricUDP64PPS: 125e3, MetricUDP64Loss: 15, MetricRTTP50: 32, MetricRTTP99: 100, MetricCPUMachTCP1: 2, MetricCPUAgentTCP1: 1, MetricCPUMachUDP64: 2, MetricCPUAgentUDP64: 0.8, MetricAgentRSS: 5, MetricCPUGBTCP1: 1},
		Overlay:      {MetricTCP1: 6, MetricTCP4: 7, MetricUDP64PPS: 100e3, MetricUDP64Loss: 20, MetricRTTP50: 36, MetricRTTP99: 120, MetricCPUMachTCP1: 2, MetricCPUAgentTCP1: 0.9, MetricCPUMachUDP64: 2, MetricCPUAgentUDP64: 1, MetricAgentRSS: 14, MetricCPUGBTCP1: 1.2},
		OverlayNaive: {MetricTCP1: 0.5, MetricTCP4: 0.6, MetricUDP64PPS: 40e3, MetricUDP64Loss: 60, MetricRTTP50: 60, MetricRTTP99: 900, MetricCPUMachTCP1: 2, MetricCPUAgentTCP1: 1.2, MetricCPUMachUDP64: 2, MetricCPUAgentUDP64: 1.3, MetricAgentRSS: 9, MetricCPUGBTCP1: 19.2},
	}
	r := &Results{
		Schema: SchemaVersion, Command: "overlay-bench --reps 3",
		Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Finished: time.Date(2026, 1, 2, 3, 14, 5, 0, time.UTC),
		Host:     Host{Hostname: "vm<&>", Kernel: "6.18", CPUModel: "AMD EPYC", CPUs: 2, IPerf3: "3.12", Sockperf: "3.7"},
		Settings: Settings{Paths: AllPaths, Repetitions: 3, TestSeconds: 10, UnderlayMTU: 1500, OverlayMTU: 1450},
		Metrics:  Metrics,
	}
	for _, p := range AllPaths {
		pr := PathResult{ID: p, Title: p.Title()}
		for rep, f := range []float64{0.9, 1, 1.2} { // medians = base
			v := map[string]float64{}
			for k, x := range base[p] {
				v[k] = x * f
			}
			pr.Runs = append(pr.Runs, Repetition{Rep: rep + 1, Values: v})
		}
		r.Paths = append(r.Paths, pr)
	}
	r.summarize()
	return r
}

func TestSummarize(t *testing.T) {
	r := syntheticResults()
	ov, _ := r.Path(Overlay)
	if st := ov.Summary[MetricTCP1]; !near(st.Median, 6) || !near(st.Min, 5.4) || !near(st.Max, 7.2) {
		t.Errorf("overlay TCP-1 = %+v, want median 6 min 5.4 max 7.2", st)
	}
	ul, _ := r.Path(Underlay)
	if _, ok := ul.Summary[MetricAgentRSS]; ok {
		t.Error("underlay reports agent memory")
	}
	if got := r.Ratios[Overlay][MetricTCP1]; !near(got, 0.6) {
		t.Errorf("overlay/kernel TCP-1 = %v, want 0.6", got)
	}
	if _, ok := r.Ratios[KernelVXLAN]; ok {
		t.Error("kernel VXLAN has ratios against itself")
	}
	want := []string{StatusMet, StatusMet, StatusMet, StatusMissed}
	var got []string
	for _, v := range r.Targets {
		got = append(got, v.Status)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("verdicts %v, want %v", got, want)
	}
	if s := r.Targets[0].String(); !strings.Contains(s, "0.60×") || !strings.Contains(s, "aim 0.80× not yet") {
		t.Errorf("verdict line %q lacks the ratio or the aim", s)
	}
	if !near(r.Targets[1].Ratio, 12) {
		t.Errorf("overlay/naive = %v, want 12", r.Targets[1].Ratio)
	}

	wantBars := []string{StatusMissed, StatusMet, StatusMissed, StatusMissed, StatusMet, StatusMissed}
	got = nil
	for _, v := range r.Bars {
		got = append(got, v.Status)
	}
	if !reflect.DeepEqual(got, wantBars) {
		t.Errorf("bars %v, want %v", got, wantBars)
	}
	for i, want := range []float64{0.75, 7.0 / 7.5, 0.8, 36.0 / 32, 0.6, 0.5} {
		if !near(r.Bars[i].Ratio, want) {
			t.Errorf("bar %q: ratio %v, want %v", r.Bars[i].Goal, r.Bars[i].Ratio, want)
		}
	}
	if r.Floor == nil || len(r.Floor.Rows) != len(floorRows) {
		t.Fatalf("floor report %+v, want %d rows", r.Floor, len(floorRows))
	}
	row := r.Floor.Rows[slices.Index(floorRows, MetricCPUGBTCP1)]
	if row.Kernel == nil || !near(*row.Kernel, 0.8) || !near(*row.Floor, 1) || !near(*row.Overlay, 1.2) ||
		!near(*row.OverlayPerFloor, 1.2) || !near(*row.FloorPerKernel, 1.25) {
		t.Errorf("CPU per GB row %+v, want 0.8, 1, 1.2, ratios 1.2 and 1.25", row)
	}
	if row := r.Floor.Rows[slices.Index(floorRows, MetricCPUGBTCP4)]; row.Kernel != nil || row.OverlayPerFloor != nil {
		t.Errorf("CPU per GB of TCP-4 was not measured, yet the row is %+v", row)
	}
	if r.Floor.HandOffs != nil {
		t.Errorf("hand-offs %v without a platform probe", r.Floor.HandOffs)
	}

	// Without the floor there is no comparison and no bar.
	saved := r.Paths
	r.Paths = slices.DeleteFunc(slices.Clone(r.Paths), func(p PathResult) bool { return p.ID == Floor })
	r.summarize()
	if r.Floor != nil || r.Bars != nil {
		t.Errorf("floor report %+v and bars %v without the floor", r.Floor, r.Bars)
	}
	r.Paths = saved

	// Without kernel VXLAN and naive, nothing can be judged.
	r.Paths = r.Paths[3:4]
	r.summarize()
	if r.Ratios != nil {
		t.Errorf("ratios without kernel VXLAN: %v", r.Ratios)
	}
	for _, v := range r.Targets {
		if v.Status != StatusNotMeasured {
			t.Errorf("%s: %s, want not measured", v.Goal, v.Status)
		}
	}
}

func TestMarkdown(t *testing.T) {
	r := syntheticResults()
	r.Platform = &Platform{SyscallNs: 1060, Seconds: 5, CRTTP50: 30, CRTTP99: 80, GoRTTP50: 50, GoRTTP99: 120, GoRounds: 90000}
	r.summarize() // the hand-offs need the platform
	md := Markdown(r)
	for _, want := range []string{
		"| metric | underlay (veth) | kernel VXLAN | floor | overlay | overlay --naive |",
		"| TCP, 1 stream (Gbit/s) | 12.00 (10.80–14.40) · 1.20× | 10.00 (9.00–12.00) | 8.00 (7.20–9.60) · 0.80× | **6.00 (5.40–7.20)** · 0.60× | 0.50 (0.45–0.60) · 0.05× |",
		"| agent memory, peak RSS (MiB) | n/a | n/a | 5.0 (4.5–6.0) | **14.0 (12.6–16.8)** | 9.0 (8.1–10.8) |",
		"| TCP, 1 stream (Gbit/s) | 10.00 | 8.00 | **6.00** | 0.75× | 0.80× |",
		"| CPU per GB, TCP 1 stream (core·s/GB) | 0.80 | 1.00 | **1.20** | 1.20× | 1.25× |",
		"| CPU per GB, TCP 4 streams (core·s/GB) | – | – | **–** | – | – |",
		"Round trips in hand-offs (p50 / 15.0 µs, half the C ping-pong of the platform probe): underlay (veth) 1.3; kernel VXLAN 1.6; floor 2.1; overlay 2.4; overlay --naive 4.0;",
		"[missed] p50 round trip at most 1.1× the floor's: 1.12× (overlay vs floor, needs ≤ 1.10×)",
		"[met] TCP, 4 streams at least 0.9× the floor: 0.93×",
		"200 k (180 k–240 k)",
		"[missed] 64-byte packet rate at least 90% of kernel VXLAN's: 0.50×",
		"Command: `overlay-bench --reps 3`",
		"![overlay vs kernel VXLAN](chart.svg)",
		"a system call costs 1.06 µs; a 64-byte UDP ping-pong round trip takes 30.0 µs (p99 80.0) between two C processes (sockperf) and 50.0 µs (p99 120.0) between two Go processes, so waking a Go process costs about 10.0 µs more",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	s := Summary(r)
	for _, want := range []string{"overlay vs kernel VXLAN", "TCP, 1 stream", "0.60×", "[met] single-stream TCP at least 10 times",
		"Platform: system call 1.06 µs; ping-pong p50 C 30.0 µs, Go 50.0 µs (+10.0 µs per Go wake-up)",
		"overlay/floor   0.75×   floor/kernel   0.80×", "[missed] 64-byte packets delivered at least 0.7× kernel VXLAN"} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
}

// checkSVG parses an SVG completely and counts its elements by name.
func checkSVG(t *testing.T, svg []byte) map[string]int {
	t.Helper()
	counts := map[string]int{}
	d := xml.NewDecoder(bytes.NewReader(svg))
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			counts[se.Name.Local]++
		}
	}
	if counts["svg"] != 1 {
		t.Fatalf("chart has %d <svg> elements", counts["svg"])
	}
	return counts
}

func TestChart(t *testing.T) {
	r := syntheticResults()
	svg := Chart(r)
	counts := checkSVG(t, svg)
	// 6 charted metrics × 5 paths bars + background + 5 legend swatches.
	if got, want := counts["rect"], 6*5+1+5; got != want {
		t.Errorf("%d rects, want %d", got, want)
	}
	s := string(svg)
	// Naive p99 is 900/70 ≈ 12.9× kernel: clipped at 3× and marked.
	if !strings.Contains(s, "<polyline") {
		t.Error("no clip mark for the naive p99 bar")
	}
	for _, want := range []string{"vm&lt;&amp;&gt;", "0.60×", "6.00", "900", "lower is better", pathColor[Overlay], pathColor[Floor], "overlay --naive",
		"Bars (issue #14): ", "TCP-4 vs floor 0.93× (≥ 0.90×)"} {
		if !strings.Contains(s, want) {
			t.Errorf("chart lacks %q", want)
		}
	}
	// A chart of one path still renders.
	r.Paths = r.Paths[:1]
	r.summarize()
	checkSVG(t, Chart(r))
}

func TestCPUPerGB(t *testing.T) {
	for _, tc := range []struct{ cores, gbps, want float64 }{
		{1, 8, 1},   // 1 GB/s on one core: 1 core-second per GB
		{0.5, 4, 1}, // half a core for 0.5 GB/s
		{1.26, 4.77, 2.113},
		{1, 0, 0}, // nothing moved
		{1, -1, 0},
	} {
		if got := cpuPerGB(tc.cores, tc.gbps); math.Abs(got-tc.want) > 1e-3 {
			t.Errorf("cpuPerGB(%v, %v) = %v, want %v", tc.cores, tc.gbps, got, tc.want)
		}
	}
}

func TestWriteReadFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	r := syntheticResults()
	if err := WriteFiles(dir, r); err != nil {
		t.Fatal(err)
	}
	back, err := ReadFile(filepath.Join(dir, FileJSON))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Ratios, r.Ratios) || !reflect.DeepEqual(back.Targets, r.Targets) ||
		!reflect.DeepEqual(back.Paths, r.Paths) || !back.Started.Equal(r.Started) {
		t.Error("results.json does not round-trip")
	}
	r.Schema = SchemaVersion + 1
	if err := WriteFiles(dir, r); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFile(filepath.Join(dir, FileJSON)); err == nil {
		t.Error("ReadFile accepted a future schema")
	}
}
