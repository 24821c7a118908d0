package tunnel_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkNamespace measures the datapaths between two namespaces with the
// tools users trust: iperf3 for single-stream TCP throughput and for 64-byte
// UDP packets delivered per second (same sender, unlimited rate), sockperf
// ping-pong for latency. Flavours: kernel (kernel vxlan both ends, set up
// like flannel.1), offload, plain and naive (this package both ends). Each
// iteration is one 3-second run; run with -benchtime 3x or more and compare
// medians (see BENCHMARKS.md).
func BenchmarkNamespace(b *testing.B) {
	requireRoot(b)
	for _, tool := range []string{"iperf3", "sockperf"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("skipping: %s not installed (make deps)", tool)
		}
	}
	for _, fl := range []flavour{kernelFlavour, offloadFlavour, plainFlavour, naiveFlavour, epollFlavour} {
		b.Run(fl.name, func(b *testing.B) {
			a, bn := pair(b)
			startNode(b, a, cfgA, fl)
			startNode(b, bn, cfgB, fl)
			ping(b, a, podB)
			server(b, bn, "iperf3", "-s", "-B", podB.String(), "-p", "5201")
			server(b, bn, "sockperf", "server", "-i", podB.String(), "-p", "11111")
			b.Run("tcp", func(b *testing.B) {
				var sum float64
				for range b.N {
					var r iperfResult
					iperf(b, a, &r, "-c", podB.String(), "-p", "5201", "-t", "3")
					sum += r.End.SumReceived.BitsPerSecond
				}
				b.ReportMetric(sum/float64(b.N)/1e6, "Mbit/s")
				b.ReportMetric(0, "ns/op")
			})
			b.Run("udp64", func(b *testing.B) {
				var sum float64
				for range b.N {
					var r iperfResult
					iperf(b, a, &r, "-c", podB.String(), "-p", "5201", "-t", "3", "-u", "-l", "64", "-b", "0")
					s := r.End.Sum
					sum += float64(s.Packets-s.LostPackets) / s.Seconds
				}
				b.ReportMetric(sum/float64(b.N), "pkts/s")
				b.ReportMetric(0, "ns/op")
			})
			b.Run("rr", func(b *testing.B) {
				var sum float64
				var csw int64
				var wall time.Duration
				for range b.N {
					before, start := contextSwitches(b), time.Now()
					sum += sockperfP50(b, a, podB.String(), "11111")
					wall += time.Since(start)
					csw += contextSwitches(b) - before
				}
				// sockperf reports half the round trip; report the whole.
				rtt := 2 * sum / float64(b.N)
				b.ReportMetric(rtt, "rtt-p50-µs")
				// The context switches of this process (both ends'
				// tunnels) per round trip, at the median's rate: the
				// hand-offs the datapath pays.
				b.ReportMetric(float64(csw)/wall.Seconds()*rtt/1e6, "csw/rtt")
				b.ReportMetric(0, "ns/op")
			})
		})
	}
}

// contextSwitches is the process's voluntary and involuntary context
// switches so far, every thread counted.
func contextSwitches(b *testing.B) int64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Nvcsw + ru.Nivcsw
}

// server runs a tool in ns until the benchmark ends.
func server(b *testing.B, ns *namespace, name string, args ...string) {
	b.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.name, name}, args...)...)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
}

type iperfResult struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		Sum struct {
			Seconds     float64 `json:"seconds"`
			Packets     int64   `json:"packets"`
			LostPackets int64   `json:"lost_packets"`
		} `json:"sum"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperf runs an iperf3 client in ns, retrying while the server starts.
func iperf(b *testing.B, ns *namespace, r *iperfResult, args ...string) {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	var out []byte
	for attempt := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, _ = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.name, "iperf3", "-J"}, args...)...).Output()
		cancel()
		*r = iperfResult{}
		if err := json.Unmarshal(out, r); err == nil && r.Error == "" {
			return
		}
		time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
	}
	b.Fatalf("iperf3 %v failed: %s", args, out)
}

var p50Line = regexp.MustCompile(`percentile 50\.000 =\s*([0-9.]+)`)

// sockperfP50 runs a 3-second UDP ping-pong and returns sockperf's median
// latency (half a round trip) in microseconds.
func sockperfP50(b *testing.B, ns *namespace, addr, port string) float64 {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	var out []byte
	for attempt := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, _ = exec.CommandContext(ctx, "ip", "netns", "exec", ns.name, "sockperf", "ping-pong", "-i", addr, "-p", port, "-t", "3").CombinedOutput()
		cancel()
		if m := p50Line.FindSubmatch(out); m != nil {
			v, err := strconv.ParseFloat(string(m[1]), 64)
			if err == nil {
				return v
			}
		}
		time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
	}
	b.Fatalf("sockperf failed: %s", lastLines(string(out), 5))
	return 0
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return fmt.Sprint(lines[max(0, len(lines)-n):])
}
