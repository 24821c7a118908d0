package suite

import (
	"fmt"
	"strings"
)

// The floor comparison (issue #14): kernel VXLAN, the floor relay and the
// overlay side by side, with the ratios overlay/floor and floor/kernel,
// the round trips counted in the platform's hand-offs, and the bars.

// floorRows are the metrics of the side-by-side table, in order.
var floorRows = []string{MetricTCP1, MetricTCP4, MetricUDP64PPS, MetricRTTP50, MetricRTTP99, MetricCPUGBTCP1, MetricCPUGBTCP4}

// FloorReport is the side-by-side comparison of kernel VXLAN, the floor
// and the overlay of one run.
type FloorReport struct {
	Rows []FloorRow `json:"rows"`
	// HandOffUs is what waking one sleeping process costs on this
	// machine: half the C ping-pong's median round trip (the platform
	// probe); zero when the probe did not run.
	HandOffUs float64 `json:"hand_off_us,omitempty"`
	// HandOffs is each path's median round trip in hand-offs
	// (rtt_p50 / HandOffUs): about 2 for kernel VXLAN (the two sockperf
	// processes) and 6 for a userspace relay (both relays woken in each
	// direction besides).
	HandOffs map[PathID]float64 `json:"rtt_p50_hand_offs,omitempty"`
}

// FloorRow is one metric of the side-by-side table. A nil figure was not
// measured.
type FloorRow struct {
	Metric          string   `json:"metric"`
	Kernel          *float64 `json:"kernel_vxlan,omitempty"`
	Floor           *float64 `json:"floor,omitempty"`
	Overlay         *float64 `json:"overlay,omitempty"`
	OverlayPerFloor *float64 `json:"overlay_per_floor,omitempty"`
	FloorPerKernel  *float64 `json:"floor_per_kernel,omitempty"`
}

// floorReport builds the comparison, or nil when the floor was not
// measured.
func (r *Results) floorReport() *FloorReport {
	if _, ok := r.Path(Floor); !ok {
		return nil
	}
	fr := &FloorReport{}
	opt := func(v float64, ok bool) *float64 {
		if !ok {
			return nil
		}
		return &v
	}
	for _, id := range floorRows {
		row := FloorRow{Metric: id,
			Kernel:          opt(r.median(KernelVXLAN, id)),
			Floor:           opt(r.median(Floor, id)),
			Overlay:         opt(r.median(Overlay, id)),
			OverlayPerFloor: opt(r.ratio(Overlay, Floor, id)),
			FloorPerKernel:  opt(r.ratio(Floor, KernelVXLAN, id)),
		}
		fr.Rows = append(fr.Rows, row)
	}
	if p := r.Platform; p != nil && p.CRTTP50 > 0 {
		fr.HandOffUs = p.CRTTP50 / 2
		fr.HandOffs = map[PathID]float64{}
		for _, pr := range r.Paths {
			if v, ok := r.median(pr.ID, MetricRTTP50); ok {
				fr.HandOffs[pr.ID] = v / fr.HandOffUs
			}
		}
	}
	return fr
}

// bars are issue #14's bars for the datapath, against the floor and
// kernel VXLAN of the same run.
var bars = []Verdict{
	{Goal: "TCP, 1 stream at least 0.9× the floor", Short: "TCP-1 vs floor", Numerator: Overlay, Denominator: Floor, Metric: MetricTCP1, Limit: 0.9},
	{Goal: "TCP, 4 streams at least 0.9× the floor", Short: "TCP-4 vs floor", Numerator: Overlay, Denominator: Floor, Metric: MetricTCP4, Limit: 0.9},
	{Goal: "64-byte packets delivered at least 0.9× the floor", Short: "64 B pps vs floor", Numerator: Overlay, Denominator: Floor, Metric: MetricUDP64PPS, Limit: 0.9},
	{Goal: "p50 round trip at most 1.1× the floor's", Short: "p50 RTT vs floor", Numerator: Overlay, Denominator: Floor, Metric: MetricRTTP50, Limit: 1.1, AtMost: true},
	{Goal: "TCP, 1 stream at least 0.55× kernel VXLAN", Short: "TCP-1 vs kernel", Numerator: Overlay, Denominator: KernelVXLAN, Metric: MetricTCP1, Limit: 0.55},
	{Goal: "64-byte packets delivered at least 0.7× kernel VXLAN", Short: "64 B pps vs kernel", Numerator: Overlay, Denominator: KernelVXLAN, Metric: MetricUDP64PPS, Limit: 0.7},
}

// judgeBars judges issue #14's bars, or returns nil when the floor was
// not measured.
func (r *Results) judgeBars() []Verdict {
	if _, ok := r.Path(Floor); !ok {
		return nil
	}
	return r.judgeGoals(bars)
}

// floorMarkdown renders the comparison and the bars.
func floorMarkdown(r *Results) string {
	fr := r.Floor
	if fr == nil {
		return ""
	}
	var b strings.Builder
	b.WriteString("## Against the floor (issue #14)\n\n")
	b.WriteString("The floor is `overlay-bench floor-relay` in each node: the agent's system calls (offload TUN, UDP GSO/GRO, " +
		"batched sendmmsg/recvmmsg, coalesced TUN writes) and none of its logic (benchmarks/floor). " +
		"CPU per GB is core-seconds per 10⁹ bytes delivered: the two relays' CPU for floor and overlay, " +
		"the whole machine's system + irq + softirq time for kernel VXLAN (which includes iperf3's own TCP stacks, " +
		"so it bounds kernel VXLAN's cost from above).\n\n")
	b.WriteString("| metric | kernel VXLAN | floor | overlay | overlay / floor | floor / kernel |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: |\n")
	val := func(m Metric, v *float64) string {
		if v == nil {
			return "–"
		}
		return formatValue(m, *v)
	}
	rat := func(v *float64) string {
		if v == nil {
			return "–"
		}
		return formatRatio(*v)
	}
	for _, row := range fr.Rows {
		m, _ := MetricByID(row.Metric)
		fmt.Fprintf(&b, "| %s (%s) | %s | %s | **%s** | %s | %s |\n", m.Name, m.Unit,
			val(m, row.Kernel), val(m, row.Floor), val(m, row.Overlay), rat(row.OverlayPerFloor), rat(row.FloorPerKernel))
	}
	b.WriteString("\n")
	if fr.HandOffUs > 0 {
		fmt.Fprintf(&b, "Round trips in hand-offs (p50 / %.1f µs, half the C ping-pong of the platform probe):", fr.HandOffUs)
		for _, p := range r.sortedPaths() {
			if v, ok := fr.HandOffs[p]; ok {
				fmt.Fprintf(&b, " %s %.1f;", p.Title(), v)
			}
		}
		b.WriteString(" a userspace relay's round trip is expected near 6 (kernel VXLAN's near 2).\n\n")
	}
	if len(r.Bars) > 0 {
		b.WriteString("Bars of issue #14 (medians of the same run; information, a missed bar does not fail the run):\n\n")
		for _, v := range r.Bars {
			fmt.Fprintf(&b, "- %s\n", v)
		}
		b.WriteString("- allocations per packet stay 0: not measured here; `make check` runs tunnel's allocation tests (TestTUNDoesNotAllocate, the pump benchmarks)\n\n")
	}
	return b.String()
}
