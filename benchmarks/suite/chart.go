package suite

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"strings"
)

// pathColor gives every path the same colour in every chart.
var pathColor = map[PathID]string{
	Underlay:     "#9d9d9d",
	KernelVXLAN:  "#4c78a8",
	Overlay:      "#f58518",
	OverlayNaive: "#e45756",
	OverlayB:     "#54a24b",
	Floor:        "#72b7b2",
	FloorB:       "#b279a2",
}

// Chart geometry, in SVG user units.
const (
	chartW      = 980.0
	chartH      = 580.0
	plotLeft    = 64.0
	plotRight   = chartW - 24
	plotTop     = 92.0
	plotBottom  = chartH - 170
	maxScale    = 3.0 // bars above this many times the baseline are clipped
	minScale    = 1.5
	gridStep    = 0.5
	labelFont   = 11
	ratioFont   = 10
	minRatioBar = 44.0 // bars shorter than this carry no ratio text
)

// Chart draws the results as an SVG: one group of bars per charted metric,
// one bar per path, each normalised to kernel VXLAN's median (= 1.0; the
// first measured path when kernel VXLAN was not measured), whiskers from
// the minimum to the maximum repetition, and the absolute median written
// above each bar. Bars beyond 3× are clipped and marked.
func Chart(r *Results) []byte {
	paths := r.sortedPaths()
	base := KernelVXLAN
	if _, ok := r.Path(base); !ok && len(paths) > 0 {
		base = paths[0]
	}
	var metrics []Metric
	for _, m := range Metrics {
		if m.Chart {
			metrics = append(metrics, m)
		}
	}

	type bar struct {
		path          PathID
		ok            bool
		abs           float64
		norm, lo, hi  float64
		label, rlabel string
	}
	groups := make([][]bar, len(metrics))
	top := minScale
	for gi, m := range metrics {
		b0, okBase := r.median(base, m.ID)
		for _, p := range paths {
			br := bar{path: p}
			pr, _ := r.Path(p)
			st, ok := pr.Summary[m.ID]
			if ok && okBase && b0 > 0 && len(st.Values) > 0 {
				br.ok, br.abs = true, st.Median
				br.norm, br.lo, br.hi = st.Median/b0, st.Min/b0, st.Max/b0
				br.label = formatValue(m, st.Median)
				br.rlabel = formatRatio(br.norm)
				top = max(top, br.hi)
			}
			groups[gi] = append(groups[gi], br)
		}
	}
	top = math.Min(math.Ceil(top/gridStep)*gridStep, maxScale)
	y := func(v float64) float64 {
		return plotBottom - (plotBottom-plotTop)*math.Min(v, top)/top
	}

	var w bytes.Buffer
	fmt.Fprintf(&w, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="Helvetica, Arial, sans-serif">`+"\n", chartW, chartH, chartW, chartH)
	fmt.Fprintf(&w, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	fmt.Fprintf(&w, `<text x="%.0f" y="30" font-size="20" font-weight="bold">overlay (userspace VXLAN) vs kernel VXLAN</text>`+"\n", plotLeft)
	sub := fmt.Sprintf("Bar height: median normalised to %s = 1.0; whiskers: min–max over %d repetition(s) of %d s; label: absolute median.",
		base.Title(), r.Settings.Repetitions, r.Settings.TestSeconds)
	fmt.Fprintf(&w, `<text x="%.0f" y="52" font-size="13" fill="#444">%s</text>`+"\n", plotLeft, esc(sub))
	host := fmt.Sprintf("%s · %s · %s · %d CPUs · Linux %s · load %.2f at start", r.Host.Hostname, r.Started.UTC().Format("2006-01-02 15:04 MST"),
		r.Host.CPUModel, r.Host.CPUs, r.Host.Kernel, r.Host.LoadAvgStart[0])
	fmt.Fprintf(&w, `<text x="%.0f" y="70" font-size="12" fill="#777">%s</text>`+"\n", plotLeft, esc(host))

	// Grid and axis.
	for v := 0.0; v <= top+1e-9; v += gridStep {
		stroke, dash := "#e4e4e4", ""
		if v == 1 {
			stroke, dash = "#333", ` stroke-dasharray="6 4"`
		}
		fmt.Fprintf(&w, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="%s"%s/>`+"\n", plotLeft, plotRight, y(v), y(v), stroke, dash)
		fmt.Fprintf(&w, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="end" fill="#555">%.1f×</text>`+"\n", plotLeft-6, y(v)+4, labelFont, v)
	}
	fmt.Fprintf(&w, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#333"/>`+"\n", plotLeft, plotRight, plotBottom, plotBottom)

	groupW := (plotRight - plotLeft) / float64(max(len(metrics), 1))
	barW := groupW * 0.8 / float64(max(len(paths), 1))
	for gi, m := range metrics {
		gx := plotLeft + groupW*float64(gi) + groupW*0.1
		for bi, br := range groups[gi] {
			x := gx + barW*float64(bi)
			if !br.ok {
				fmt.Fprintf(&w, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="middle" fill="#999">–</text>`+"\n", x+barW/2, plotBottom-6, labelFont)
				continue
			}
			yt := y(br.norm)
			fmt.Fprintf(&w, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s, %s: %s (%s of %s)</title></rect>`+"\n",
				x+1, yt, barW-2, plotBottom-yt, pathColor[br.path], esc(br.path.Title()), esc(m.Name), esc(formatWithUnit(m, br.abs)), br.rlabel, esc(base.Title()))
			if br.norm > top { // clipped: a white zigzag across the top of the bar
				zy := plotTop + 10
				fmt.Fprintf(&w, `<polyline points="%.1f,%.1f %.1f,%.1f %.1f,%.1f %.1f,%.1f" fill="none" stroke="#fff" stroke-width="3"/>`+"\n",
					x+1, zy, x+barW/3, zy-5, x+2*barW/3, zy+5, x+barW-1, zy)
			}
			// Whisker.
			cx := x + barW/2
			if br.hi > br.lo {
				fmt.Fprintf(&w, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#222" stroke-width="1.2"/>`+"\n", cx, cx, y(br.lo), y(br.hi))
				for _, v := range []float64{br.lo, br.hi} {
					if v <= top {
						fmt.Fprintf(&w, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#222" stroke-width="1.2"/>`+"\n", cx-4, cx+4, y(v), y(v))
					}
				}
			}
			ly := math.Min(yt, y(br.hi)) - 5
			fmt.Fprintf(&w, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="middle" fill="#111">%s</text>`+"\n", cx, math.Max(ly, plotTop-4), labelFont, esc(br.label))
			if plotBottom-yt >= minRatioBar && br.path != base {
				fmt.Fprintf(&w, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="middle" fill="#fff" font-weight="bold">%s</text>`+"\n", cx, plotBottom-8, ratioFont, esc(br.rlabel))
			}
		}
		lx := plotLeft + groupW*(float64(gi)+0.5)
		fmt.Fprintf(&w, `<text x="%.1f" y="%.1f" font-size="13" text-anchor="middle" font-weight="bold">%s</text>`+"\n", lx, plotBottom+22, esc(m.Name))
		note := m.Unit + ", higher is better"
		if !m.HigherIsBetter {
			note = m.Unit + ", lower is better"
		}
		fmt.Fprintf(&w, `<text x="%.1f" y="%.1f" font-size="%d" text-anchor="middle" fill="#555">%s</text>`+"\n", lx, plotBottom+39, labelFont, esc(note))
	}

	// Legend.
	lx := plotLeft
	for _, p := range paths {
		fmt.Fprintf(&w, `<rect x="%.1f" y="%.1f" width="14" height="14" fill="%s"/>`+"\n", lx, plotBottom+62, pathColor[p])
		fmt.Fprintf(&w, `<text x="%.1f" y="%.1f" font-size="13">%s</text>`+"\n", lx+20, plotBottom+74, esc(p.Title()))
		lx += 40 + 8*float64(len(p.Title()))
	}
	// Targets, one line: "TCP-1 vs kernel 0.62× (≥ 0.50) met · ...";
	// issue #14's bars instead of issue #7's targets when the floor was
	// measured.
	verdicts, title, perLine := r.Targets, "Targets: ", 2
	if len(r.Bars) > 0 {
		verdicts, title, perLine = r.Bars, "Bars (issue #14): ", 3
	}
	var parts []string
	for _, v := range verdicts {
		if v.Status == StatusNotMeasured {
			continue
		}
		op, color := "≥", "#1a7f37"
		if v.AtMost {
			op = "≤"
		}
		if v.Status != StatusMet {
			color = "#c62828"
		}
		parts = append(parts, fmt.Sprintf(`%s %s (%s %s) <tspan fill="%s" font-weight="bold">%s</tspan>`,
			esc(v.Short), formatRatio(v.Ratio), op, formatRatio(v.Limit), color, esc(v.Status)))
	}
	for i := 0; i < len(parts); i += perLine {
		head := title
		if i > 0 {
			head = ""
		}
		line := strings.Join(parts[i:min(i+perLine, len(parts))], " · ")
		fmt.Fprintf(&w, `<text x="%.0f" y="%.1f" font-size="12" fill="#444">%s%s</text>`+"\n", plotLeft, plotBottom+98+18*float64(i/perLine), head, line)
	}
	w.WriteString("</svg>\n")
	return w.Bytes()
}

func esc(s string) string { return html.EscapeString(s) }
