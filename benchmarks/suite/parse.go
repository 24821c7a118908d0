package suite

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// errParse is wrapped by every error about a tool's output the suite cannot
// read; the tool's version probably changed its format.
var errParse = errors.New("unreadable tool output")

// iperfSum is the part of an iperf3 -J "end.sum*" object the suite reads.
type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         float64 `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Packets       float64 `json:"packets"`
	LostPackets   float64 `json:"lost_packets"`
}

type iperfReport struct {
	Error string `json:"error"`
	End   struct {
		Sum         *iperfSum `json:"sum"`
		SumSent     *iperfSum `json:"sum_sent"`
		SumReceived *iperfSum `json:"sum_received"`
	} `json:"end"`
}

func decodeIperf(out []byte) (iperfReport, error) {
	var r iperfReport
	if err := json.Unmarshal(out, &r); err != nil {
		return r, fmt.Errorf("%w: iperf3 -J: %v", errParse, err)
	}
	if r.Error != "" {
		return r, fmt.Errorf("iperf3: %s", r.Error)
	}
	return r, nil
}

// parseIperfTCP returns the receiver's throughput in Gbit/s from iperf3 -J
// output of a TCP test.
func parseIperfTCP(out []byte) (gbps float64, err error) {
	r, err := decodeIperf(out)
	if err != nil {
		return 0, err
	}
	s := r.End.SumReceived
	if s == nil {
		return 0, fmt.Errorf("%w: iperf3 -J has no end.sum_received", errParse)
	}
	if !(s.BitsPerSecond > 0) || math.IsInf(s.BitsPerSecond, 0) {
		return 0, fmt.Errorf("%w: iperf3 receiver rate %v bit/s", errParse, s.BitsPerSecond)
	}
	return s.BitsPerSecond / 1e9, nil
}

// udpResult is what the suite keeps from a UDP test.
type udpResult struct {
	Sent      float64 // datagrams the client sent
	Delivered float64 // datagrams the server received
	PPS       float64 // Delivered per second of the receiver's interval
	LossPct   float64 // 100 * (Sent - Delivered) / Sent
}

// parseIperfUDP reads iperf3 -J output of a UDP test. The server counts
// datagrams by sequence number: sum_received.packets is the highest
// sequence seen and lost_packets the gaps below it, so the difference is
// what arrived. Loss is computed against what the client sent, so datagrams
// lost after the last delivered one count too.
func parseIperfUDP(out []byte) (udpResult, error) {
	r, err := decodeIperf(out)
	if err != nil {
		return udpResult{}, err
	}
	recv, sent := r.End.SumReceived, r.End.SumSent
	if recv == nil { // iperf3 before 3.10 reports only end.sum, from the server's view.
		recv = r.End.Sum
	}
	if sent == nil {
		sent = r.End.Sum
	}
	if recv == nil || sent == nil {
		return udpResult{}, fmt.Errorf("%w: iperf3 -J has no end.sum_received/end.sum", errParse)
	}
	res := udpResult{Sent: sent.Packets, Delivered: recv.Packets - recv.LostPackets}
	switch {
	case res.Sent <= 0:
		return udpResult{}, fmt.Errorf("%w: iperf3 sent %v datagrams", errParse, res.Sent)
	case res.Delivered <= 0:
		return udpResult{}, fmt.Errorf("iperf3: none of %v datagrams was delivered", res.Sent)
	case recv.Seconds <= 0:
		return udpResult{}, fmt.Errorf("%w: iperf3 receiver interval %v s", errParse, recv.Seconds)
	}
	res.PPS = res.Delivered / recv.Seconds
	res.LossPct = max(0, 100*(res.Sent-res.Delivered)/res.Sent)
	return res, nil
}

// rttResult is what the suite keeps from a sockperf ping-pong run, in µs.
type rttResult struct {
	Observations int
	P50, P99     float64
	Dropped      int
}

var (
	ansiEscape      = regexp.MustCompile("\x1b\\[[0-9;]*m")
	sockPercentile  = regexp.MustCompile(`--->\s+percentile\s+([0-9.]+)\s*=\s*([0-9.]+)`)
	sockObservation = regexp.MustCompile(`Total\s+([0-9]+)\s+observations`)
	sockDropped     = regexp.MustCompile(`#\s*dropped messages\s*=\s*([0-9]+)`)
	sockRTTMode     = regexp.MustCompile(`avg-rtt=`)
)

// parseSockperf reads the summary sockperf ping-pong --full-rtt prints:
// "---> percentile 50.000 =   25.288" lines in µs of round trip. It
// insists on the round-trip mode (avg-rtt) because without --full-rtt
// sockperf prints half round trips under the same labels.
func parseSockperf(out []byte) (rttResult, error) {
	clean := ansiEscape.ReplaceAll(out, nil)
	var res rttResult
	var have50, have99, rtt bool
	sc := bufio.NewScanner(bytes.NewReader(clean))
	for sc.Scan() {
		line := sc.Text()
		if sockRTTMode.MatchString(line) {
			rtt = true
		}
		if m := sockObservation.FindStringSubmatch(line); m != nil {
			res.Observations, _ = strconv.Atoi(m[1])
		}
		if m := sockDropped.FindStringSubmatch(line); m != nil {
			res.Dropped, _ = strconv.Atoi(m[1])
		}
		m := sockPercentile.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		pct, err1 := strconv.ParseFloat(m[1], 64)
		v, err2 := strconv.ParseFloat(m[2], 64)
		if err1 != nil || err2 != nil {
			return rttResult{}, fmt.Errorf("%w: sockperf line %q", errParse, strings.TrimSpace(line))
		}
		switch pct {
		case 50:
			res.P50, have50 = v, true
		case 99:
			res.P99, have99 = v, true
		}
	}
	switch {
	case res.Observations == 0:
		return rttResult{}, fmt.Errorf("sockperf: no round trip observed (no reply from the server?)")
	case !rtt:
		return rttResult{}, fmt.Errorf("%w: sockperf printed no avg-rtt (run without --full-rtt?)", errParse)
	case !have50 || !have99:
		return rttResult{}, fmt.Errorf("%w: sockperf printed no 50th/99th percentile", errParse)
	case !(res.P50 > 0) || res.P99 < res.P50:
		return rttResult{}, fmt.Errorf("%w: sockperf percentiles p50=%v p99=%v", errParse, res.P50, res.P99)
	}
	return res, nil
}

// parseSubnetEnv returns FLANNEL_SUBNET from a subnet.env file's content.
func parseSubnetEnv(b []byte) (string, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "FLANNEL_SUBNET="); ok && v != "" {
			return v, nil
		}
	}
	return "", fmt.Errorf("%w: subnet.env has no FLANNEL_SUBNET", errParse)
}

// firstLine returns the first non-empty line of b, trimmed.
func firstLine(b []byte) string {
	for line := range strings.SplitSeq(string(ansiEscape.ReplaceAll(b, nil)), "\n") {
		if s := strings.TrimSpace(line); s != "" {
			return s
		}
	}
	return ""
}

// versionOf picks the version out of "iperf 3.12 (cJSON 1.7.15)" or
// "sockperf, version 3.7-no.git".
func versionOf(line string) string {
	for f := range strings.FieldsSeq(line) {
		f = strings.Trim(f, ",#:()")
		if f != "" && f[0] >= '0' && f[0] <= '9' && strings.Contains(f, ".") {
			return f
		}
	}
	return line
}
