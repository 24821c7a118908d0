package suite

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// Result file names inside Config.OutDir.
const (
	FileJSON     = "results.json"
	FileMarkdown = "results.md"
	FileChart    = "chart.svg"
)

// WriteFiles writes results.json, results.md and chart.svg into dir,
// creating it if needed. Each file is written to a temporary name and
// renamed, so a reader never sees half a file.
func WriteFiles(dir string, r *Results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("results directory: %w", err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{
		{FileJSON, append(js, '\n')},
		{FileMarkdown, []byte(Markdown(r))},
		{FileChart, Chart(r)},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, f.data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
		if err := os.Rename(tmp, p); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return nil
}

// ReadFile reads a results.json written by WriteFiles. The repetitions are
// the source of truth: summaries, ratios and verdicts are computed again
// from them, so a file re-rendered by a newer suite stays consistent.
func ReadFile(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if r.Schema != SchemaVersion {
		return nil, fmt.Errorf("%s: schema %d, this suite reads %d", path, r.Schema, SchemaVersion)
	}
	r.summarize()
	return &r, nil
}

// formatValue renders v in the metric's unit with a sensible precision.
func formatValue(m Metric, v float64) string {
	switch m.Unit {
	case "packets/s":
		switch {
		case v >= 1e6:
			return fmt.Sprintf("%.2f M", v/1e6)
		case v >= 1e3:
			return fmt.Sprintf("%.0f k", v/1e3)
		}
		return fmt.Sprintf("%.0f", v)
	case "µs":
		if v >= 1000 {
			return fmt.Sprintf("%.0f", v)
		}
		return fmt.Sprintf("%.1f", v)
	case "%", "MiB":
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// formatWithUnit is formatValue followed by the unit.
func formatWithUnit(m Metric, v float64) string {
	s := formatValue(m, v)
	switch m.Unit {
	case "packets/s":
		return strings.TrimSpace(s) + "pps"
	case "%":
		return s + "%"
	}
	return s + " " + m.Unit
}

func formatRatio(v float64) string {
	switch {
	case math.IsInf(v, 0) || math.IsNaN(v):
		return "–"
	case v >= 10:
		return fmt.Sprintf("%.0f×", v)
	}
	return fmt.Sprintf("%.2f×", v)
}

// cell renders a Stat as "median (min–max)".
func cell(m Metric, st Stat) string {
	if len(st.Values) == 1 || st.Min == st.Max {
		return formatValue(m, st.Median)
	}
	return fmt.Sprintf("%s (%s–%s)", formatValue(m, st.Median), formatValue(m, st.Min), formatValue(m, st.Max))
}

// Markdown renders the results as a markdown document: the table of
// medians with min–max, the ratios against kernel VXLAN, the target
// verdicts and the chart.
func Markdown(r *Results) string {
	var b strings.Builder
	paths := r.sortedPaths()
	fmt.Fprintf(&b, "# overlay: throughput comparison\n\n")
	fmt.Fprintf(&b, "Measured %s on `%s` (%s, %d CPUs, Linux %s), load average %.2f at the start (%.2f at the end, which counts the suite's own load generators).\n\n",
		r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Host.Hostname, r.Host.CPUModel, r.Host.CPUs, r.Host.Kernel,
		r.Host.LoadAvgStart[0], r.Host.LoadAvgEnd[0])
	fmt.Fprintf(&b, "Command: `%s`\n\n", r.Command)
	fmt.Fprintf(&b, "%d repetition(s) × %d s per test, paths interleaved within every repetition; two network namespaces joined by a veth pair (MTU %d), overlay MTU %d. ",
		r.Settings.Repetitions, r.Settings.TestSeconds, r.Settings.UnderlayMTU, r.Settings.OverlayMTU)
	fmt.Fprintf(&b, "Tools: iperf3 %s, sockperf %s", r.Host.IPerf3, r.Host.Sockperf)
	if r.Host.OverlayVersion != "" {
		fmt.Fprintf(&b, ", overlay %s", r.Host.OverlayVersion)
	}
	if r.Host.EtcdDescription != "" {
		fmt.Fprintf(&b, ", etcd: %s", r.Host.EtcdDescription)
	}
	b.WriteString(".\n\n")
	b.WriteString("Cells: median (min–max) over the repetitions")
	if r.Ratios != nil {
		b.WriteString("; × is the ratio of medians to kernel VXLAN in the same run")
	}
	b.WriteString(".\n\n")

	b.WriteString("| metric |")
	for _, p := range paths {
		fmt.Fprintf(&b, " %s |", p.Title())
	}
	b.WriteString("\n| --- |")
	for range paths {
		b.WriteString(" ---: |")
	}
	b.WriteString("\n")
	for _, m := range Metrics {
		fmt.Fprintf(&b, "| %s (%s) |", m.Name, m.Unit)
		for _, p := range paths {
			pr, _ := r.Path(p)
			st, ok := pr.Summary[m.ID]
			switch {
			case !ok && m.AgentOnly && !p.Relay():
				b.WriteString(" n/a |")
				continue
			case !ok:
				b.WriteString(" – |")
				continue
			}
			c := cell(m, st)
			if p == Overlay {
				c = "**" + c + "**"
			}
			if ratio, ok := r.Ratios[p][m.ID]; ok && m.Chart {
				c += " · " + formatRatio(ratio)
			}
			fmt.Fprintf(&b, " %s |", c)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")

	if p := r.Platform; p != nil {
		fmt.Fprintf(&b, "Platform probe (what bounds any userspace datapath here; between the two namespaces over the underlay veth, %d s each): "+
			"a system call costs %.2f µs; a 64-byte UDP ping-pong round trip takes %.1f µs (p99 %.1f) between two C processes (sockperf) "+
			"and %.1f µs (p99 %.1f) between two Go processes, so waking a Go process costs about %.1f µs more than waking a C one. "+
			"Kernel VXLAN wakes only the two sockperf processes per round trip; the overlay path also wakes each agent twice.\n\n",
			p.Seconds, p.SyscallNs/1000, p.CRTTP50, p.CRTTP99, p.GoRTTP50, p.GoRTTP99, p.GoWakeExtra())
	}
	b.WriteString(floorMarkdown(r))
	if len(r.Targets) > 0 {
		b.WriteString("Targets from issue #7 (information; a missed target does not fail the run):\n\n")
		for _, v := range r.Targets {
			fmt.Fprintf(&b, "- %s\n", v)
		}
		b.WriteString("\n")
	}
	for _, p := range r.Paths {
		for _, e := range p.Errors {
			fmt.Fprintf(&b, "- **%s failed**: %s\n", p.ID, e)
		}
	}
	fmt.Fprintf(&b, "![overlay vs kernel VXLAN](%s)\n", FileChart)
	return b.String()
}

// Summary renders the ratios against kernel VXLAN and the target verdicts
// for a terminal: the lines a person running the suite looks for first.
func Summary(r *Results) string {
	var b strings.Builder
	rule := strings.Repeat("=", 78) + "\n"
	b.WriteString(rule)
	if r.Ratios == nil {
		b.WriteString("  kernel VXLAN was not measured: no ratios.\n")
	}
	for _, p := range r.sortedPaths() {
		ratios, ok := r.Ratios[p]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "  %s vs kernel VXLAN (same run, medians of %d × %d s):\n", p.Title(), r.Settings.Repetitions, r.Settings.TestSeconds)
		for _, m := range Metrics {
			v, ok := ratios[m.ID]
			if !ok || !m.Chart {
				continue
			}
			a, _ := r.median(p, m.ID)
			k, _ := r.median(KernelVXLAN, m.ID)
			better := "higher is better"
			if !m.HigherIsBetter {
				better = "lower is better"
			}
			fmt.Fprintf(&b, "    %-26s %7s   (%s vs %s; %s)\n", m.Name, formatRatio(v), formatWithUnit(m, a), formatWithUnit(m, k), better)
		}
	}
	if p := r.Platform; p != nil {
		fmt.Fprintf(&b, "  Platform: system call %.2f µs; ping-pong p50 C %.1f µs, Go %.1f µs (+%.1f µs per Go wake-up)\n",
			p.SyscallNs/1000, p.CRTTP50, p.GoRTTP50, p.GoWakeExtra())
	}
	if fr := r.Floor; fr != nil {
		b.WriteString("  against the floor (issue #14), medians:\n")
		for _, row := range fr.Rows {
			m, _ := MetricByID(row.Metric)
			if row.OverlayPerFloor != nil || row.FloorPerKernel != nil {
				of, fk := "–", "–"
				if row.OverlayPerFloor != nil {
					of = formatRatio(*row.OverlayPerFloor)
				}
				if row.FloorPerKernel != nil {
					fk = formatRatio(*row.FloorPerKernel)
				}
				fmt.Fprintf(&b, "    %-26s overlay/floor %7s   floor/kernel %7s\n", m.Name, of, fk)
			}
		}
		for _, v := range r.Bars {
			fmt.Fprintf(&b, "    %s\n", v)
		}
	}
	if len(r.Targets) > 0 {
		b.WriteString("  Targets (information only):\n")
		for _, v := range r.Targets {
			fmt.Fprintf(&b, "    %s\n", v)
		}
	}
	b.WriteString(rule)
	return b.String()
}
