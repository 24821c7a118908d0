package suite

import (
	"bytes"
	"encoding/xml"
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// syntheticResults builds a four-path, three-repetition result whose
// medians are known: overlay reaches 0.6× kernel VXLAN on TCP-1 (met, aim
// not reached), 12× naive (met), 1.5× its p50 (met) and 0.5× its packet
// rate (missed).
func syntheticResults() *Results {
	base := map[PathID]map[string]float64{
		Underlay:     {MetricTCP1: 12, MetricTCP4: 14, MetricUDP64PPS: 300e3, MetricUDP64Loss: 5, MetricRTTP50: 20, MetricRTTP99: 60, MetricCPUMachTCP1: 1.9, MetricCPUMachUDP64: 2},
		KernelVXLAN:  {MetricTCP1: 10, MetricTCP4: 11, MetricUDP64PPS: 200e3, MetricUDP64Loss: 10, MetricRTTP50: 24, MetricRTTP99: 70, MetricCPUMachTCP1: 2, MetricCPUMachUDP64: 2},
		Overlay:      {MetricTCP1: 6, MetricTCP4: 7, MetricUDP64PPS: 100e3, MetricUDP64Loss: 20, MetricRTTP50: 36, MetricRTTP99: 120, MetricCPUMachTCP1: 2, MetricCPUAgentTCP1: 0.9, MetricCPUMachUDP64: 2, MetricCPUAgentUDP64: 1, MetricAgentRSS: 14},
		OverlayNaive: {MetricTCP1: 0.5, MetricTCP4: 0.6, MetricUDP64PPS: 40e3, MetricUDP64Loss: 60, MetricRTTP50: 60, MetricRTTP99: 900, MetricCPUMachTCP1: 2, MetricCPUAgentTCP1: 1.2, MetricCPUMachUDP64: 2, MetricCPUAgentUDP64: 1.3, MetricAgentRSS: 9},
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

	// Without kernel VXLAN and naive, nothing can be judged.
	r.Paths = r.Paths[2:3]
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
	md := Markdown(r)
	for _, want := range []string{
		"| metric | underlay (veth) | kernel VXLAN | overlay | overlay --naive |",
		"| TCP, 1 stream (Gbit/s) | 12.00 (10.80–14.40) · 1.20× | 10.00 (9.00–12.00) | **6.00 (5.40–7.20)** · 0.60× | 0.50 (0.45–0.60) · 0.05× |",
		"| agent memory, peak RSS (MiB) | n/a | n/a | **14.0 (12.6–16.8)** | 9.0 (8.1–10.8) |",
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
		"Platform: system call 1.06 µs; ping-pong p50 C 30.0 µs, Go 50.0 µs (+10.0 µs per Go wake-up)"} {
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
	// 5 charted metrics × 4 paths bars + background + 4 legend swatches.
	if got, want := counts["rect"], 5*4+1+4; got != want {
		t.Errorf("%d rects, want %d", got, want)
	}
	s := string(svg)
	// Naive p99 is 900/70 ≈ 12.9× kernel: clipped at 3× and marked.
	if !strings.Contains(s, "<polyline") {
		t.Error("no clip mark for the naive p99 bar")
	}
	for _, want := range []string{"vm&lt;&amp;&gt;", "0.60×", "6.00", "900", "lower is better", pathColor[Overlay], "overlay --naive"} {
		if !strings.Contains(s, want) {
			t.Errorf("chart lacks %q", want)
		}
	}
	// A chart of one path still renders.
	r.Paths = r.Paths[:1]
	r.summarize()
	checkSVG(t, Chart(r))
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
