package suite

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// probePort is the UDP port of the probe's servers in node b.
const probePort = 11112

// probeSeconds bounds each of the probe's two ping-pongs.
const probeSeconds = 5

// probe measures Platform between the two node namespaces, over the
// underlay veth: sockperf against sockperf, then a Go client (this
// process) against a Go echo server (Config.EchoCommand), each for
// min(Duration, 5 s).
func (r *runner) probe(ctx context.Context) (*Platform, error) {
	d := min(r.cfg.Duration, probeSeconds*time.Second)
	p := &Platform{SyscallNs: syscallCost(), Seconds: int(d / time.Second)}
	dir := filepath.Join(r.work, "probe")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	target := nodes[1].underlay.Addr()
	addr := net.JoinHostPort(target.String(), strconv.Itoa(probePort))

	c, err := r.probeServer(ctx, "sockperf server", filepath.Join(dir, "sockperf-server.log"),
		"sockperf", "server", "-i", target.String(), "-p", strconv.Itoa(probePort))
	if err != nil {
		return nil, err
	}
	out, err := runTool(ctx, nodes[0].ns, d+toolSlack, "sockperf", "ping-pong", "-i", target.String(),
		"-p", strconv.Itoa(probePort), "-t", strconv.Itoa(p.Seconds), "-m", strconv.Itoa(pingPongSize), "--full-rtt")
	if serr := c.stop(); err == nil {
		err = serr
	}
	if err != nil {
		return nil, fmt.Errorf("sockperf ping-pong: %w", err)
	}
	rtt, err := parseSockperf(out)
	if err != nil {
		return nil, err
	}
	p.CRTTP50, p.CRTTP99 = rtt.P50, rtt.P99

	echo := r.cfg.EchoCommand
	if echo == nil {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("the Go echo server: %w", err)
		}
		echo = []string{self}
	}
	g, err := r.probeServer(ctx, "Go echo server", filepath.Join(dir, "go-echo.log"), append(slices.Clone(echo), EchoArg, addr)...)
	if err != nil {
		return nil, err
	}
	rounds, timeouts, rtts, err := goPingPong(ctx, addr, d)
	if serr := g.stop(); err == nil {
		err = serr
	}
	if err != nil {
		return nil, fmt.Errorf("ping-pong between Go processes: %w", err)
	}
	p.GoRounds, p.GoTimeouts = rounds, timeouts
	p.GoRTTP50, p.GoRTTP99 = percentileUS(rtts, 50), percentileUS(rtts, 99)
	fmt.Fprintf(r.cfg.Progress, "platform probe: system call %.2f µs; UDP ping-pong over the underlay, p50: sockperf %.1f µs, Go %.1f µs (a Go wake-up costs %.1f µs more)\n",
		p.SyscallNs/1000, p.CRTTP50, p.GoRTTP50, p.GoWakeExtra())
	return p, nil
}

// probeServer starts a UDP server in node b and waits until it listens on
// probePort; on error nothing is left running.
func (r *runner) probeServer(ctx context.Context, name, logPath string, argv ...string) (*process, error) {
	s, err := startProcess(name, nodes[1].ns, logPath, argv...)
	if err != nil {
		return nil, err
	}
	if err := waitListening(ctx, nodes[1].ns, "-u", probePort, s); err != nil {
		return nil, errors.Join(err, s.stop())
	}
	return s, nil
}

// syscallCost is the best of five runs of getppid(2), in ns: the price of
// entering and leaving the kernel, which every read, write and wake-up of a
// userspace datapath pays.
func syscallCost() float64 {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const n = 200_000
	best := math.Inf(1)
	for range 5 {
		start := time.Now()
		for range n {
			syscall.Getppid()
		}
		best = min(best, float64(time.Since(start).Nanoseconds())/n)
	}
	return best
}

// goPingPong sends 64-byte datagrams to addr from node a, one at a time,
// for d, and returns the round trips answered, the ones that timed out
// (after a second each), and the measured round-trip times. Each datagram
// carries a sequence number, so a late answer is never taken for the
// current one.
func goPingPong(ctx context.Context, addr string, d time.Duration) (rounds, timeouts int, rtts []time.Duration, err error) {
	var c net.Conn
	if err := inNetns(nodes[0].ns, func() error {
		var err error
		c, err = net.Dial("udp4", addr)
		return err
	}); err != nil {
		return 0, 0, nil, err
	}
	defer c.Close()
	msg := make([]byte, pingPongSize)
	buf := make([]byte, 2048)
	rtts = make([]time.Duration, 0, 1<<16)
	const warmup = 200
	end := time.Now().Add(d)
	for seq := uint64(1); ; seq++ {
		now := time.Now()
		if now.After(end) || ctx.Err() != nil {
			break
		}
		binary.BigEndian.PutUint64(msg, seq)
		if _, err := c.Write(msg); err != nil {
			return 0, 0, nil, err
		}
		if err := c.SetReadDeadline(now.Add(time.Second)); err != nil {
			return 0, 0, nil, err
		}
		for {
			n, err := c.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				timeouts++
				break
			}
			if err != nil {
				return 0, 0, nil, err
			}
			if n == len(msg) && binary.BigEndian.Uint64(buf) == seq {
				if seq > warmup {
					rtts = append(rtts, time.Since(now))
					rounds++
				}
				break
			}
		}
	}
	if ctx.Err() != nil {
		return 0, 0, nil, ctx.Err()
	}
	if rounds == 0 {
		return 0, timeouts, nil, fmt.Errorf("no answer from the echo server at %s (%d timeouts)", addr, timeouts)
	}
	return rounds, timeouts, rtts, nil
}

// percentileUS returns the p-th percentile of ds in µs; it sorts ds.
func percentileUS(ds []time.Duration, p int) float64 {
	slices.Sort(ds)
	i := min(len(ds)-1, len(ds)*p/100)
	return float64(ds[i].Nanoseconds()) / 1000
}
