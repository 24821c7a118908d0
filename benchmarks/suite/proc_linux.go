package suite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// nsArgv returns the argv that runs argv in network namespace ns (the
// host's when ns is empty). `ip netns exec` execs argv in place, so the
// PID of the started command is the tool's own.
func nsArgv(ns string, argv []string) []string {
	if ns == "" {
		return argv
	}
	return append([]string{"ip", "netns", "exec", ns}, argv...)
}

// childAttr puts every child in its own process group, so a terminal's
// Ctrl-C reaches only the suite, which then stops its children in order,
// and asks the kernel to kill the child if the suite dies without cleaning
// up.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// childEnv is the environment of every child: the suite's own, less the
// OVERLAY_* and FLANNELD_* variables the agent reads as flag defaults, so
// that every run measures the same configuration whatever the shell holds.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OVERLAY_") && !strings.HasPrefix(kv, "FLANNELD_") {
			env = append(env, kv)
		}
	}
	return env
}

// killGrace is how long a child has between SIGTERM and SIGKILL.
const killGrace = 3 * time.Second

// runTool runs argv in namespace ns and returns its standard output. The
// run is bounded by timeout: the tool gets SIGTERM, then SIGKILL. The
// output is returned on failure too (iperf3 -J reports errors in JSON);
// the error carries the tail of standard error.
func runTool(ctx context.Context, ns string, timeout time.Duration, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	full := nsArgv(ns, argv)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = childEnv()
	cmd.SysProcAttr = childAttr()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = killGrace
	err := cmd.Run()
	if err != nil {
		what := strings.Join(argv, " ")
		if ns != "" {
			what = "[" + ns + "] " + what
		}
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			err = fmt.Errorf("%s: timed out after %v", what, timeout)
		case ctx.Err() != nil:
			err = fmt.Errorf("%s: %w", what, ctx.Err())
		default:
			if tail := tailLines(stderr.Bytes(), 6); tail != "" {
				err = fmt.Errorf("%s: %w: %s", what, err, tail)
			} else {
				err = fmt.Errorf("%s: %w", what, err)
			}
		}
	}
	return stdout.Bytes(), err
}

// ipTimeout bounds one `ip`/`bridge` configuration command.
const ipTimeout = 15 * time.Second

// ip runs `ip args...` on the host.
func ip(ctx context.Context, args ...string) error {
	_, err := runTool(ctx, "", ipTimeout, append([]string{"ip"}, args...)...)
	return err
}

// process is a long-running child (a server, etcd, an agent) started in a
// node namespace, its output going to a log file. Methods are safe for
// concurrent use; stop is idempotent.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the child has been reaped
	waitErr error         // valid once done is closed

	stopOnce sync.Once
	stopErr  error
}

// startProcess starts argv in namespace ns with its output in logPath.
// The caller must call stop (the waiting goroutine ends with the child).
func startProcess(name, ns, logPath string, argv ...string) (*process, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer f.Close() // the child has its own descriptor
	full := nsArgv(ns, argv)
	cmd := exec.Command(full[0], full[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = childEnv()
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, strings.Join(argv, " "), err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// pid returns the child's process ID.
func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the child has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes how the child ended, with the tail of its log; only
// meaningful once exited reports true.
func (p *process) exitError() error {
	return fmt.Errorf("%s exited (%v); last log lines:\n%s", p.name, p.waitErr, p.logTail(15))
}

// stop sends SIGTERM, waits up to killGrace, then sends SIGKILL and reaps
// the child. Stopping a child that already exited is not an error.
func (p *process) stop() error {
	p.stopOnce.Do(func() {
		if p.exited() {
			return
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			p.stopErr = fmt.Errorf("stop %s (pid %d): %w", p.name, p.pid(), err)
		}
		t := time.NewTimer(killGrace)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
			if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				p.stopErr = fmt.Errorf("kill %s (pid %d): %w", p.name, p.pid(), err)
			}
			<-p.done
		}
	})
	return p.stopErr
}

// logTail returns the last n lines of the child's log.
func (p *process) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return tailLines(b, n)
}

// tailLines returns the last n non-empty lines of b, joined by newlines.
func tailLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}

// cpuSample is one reading of the CPU time of the whole machine and of a
// set of processes. Both are in USER_HZ ticks, so their ratio needs no
// clock rate.
type cpuSample struct {
	busy, total uint64 // /proc/stat "cpu" line: busy = total - idle - iowait
	kernel      uint64 // the same line's system + irq + softirq
	procs       uint64 // utime+stime of the sampled processes
	ncpu        int
	at          time.Time
}

// sampleCPU reads /proc/stat and /proc/<pid>/stat of pids.
func sampleCPU(pids []int) (cpuSample, error) {
	s := cpuSample{at: time.Now()}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, err
	}
	s.busy, s.total, s.ncpu, err = parseProcStat(b)
	if err != nil {
		return s, err
	}
	if s.kernel, err = kernelTicks(b); err != nil {
		return s, err
	}
	for _, pid := range pids {
		t, err := procCPUTicks(pid)
		if err != nil {
			return s, err
		}
		s.procs += t
	}
	return s, nil
}

// parseProcStat reads the aggregate "cpu" line of /proc/stat (user nice
// system idle iowait irq softirq steal ...; guest time is already part of
// user) and counts the per-CPU lines.
func parseProcStat(b []byte) (busy, total uint64, ncpu int, err error) {
	found := false
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if f[0] != "cpu" {
			if strings.HasPrefix(f[0], "cpu") {
				ncpu++
			}
			continue
		}
		if len(f) < 9 {
			return 0, 0, 0, fmt.Errorf("%w: /proc/stat cpu line %q", errParse, line)
		}
		var v [8]uint64
		for i := range v {
			if v[i], err = strconv.ParseUint(f[i+1], 10, 64); err != nil {
				return 0, 0, 0, fmt.Errorf("%w: /proc/stat cpu line %q", errParse, line)
			}
			total += v[i]
		}
		busy = total - v[3] - v[4]
		found = true
	}
	if !found || ncpu == 0 {
		return 0, 0, 0, fmt.Errorf("%w: /proc/stat has no cpu lines", errParse)
	}
	return busy, total, ncpu, nil
}

// kernelTicks returns system + irq + softirq of the aggregate "cpu" line
// of /proc/stat: the time the kernel spent on behalf of every process and
// in interrupts, where kernel VXLAN's encapsulation runs.
func kernelTicks(b []byte) (uint64, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || f[0] != "cpu" {
			continue
		}
		var sum uint64
		for _, i := range []int{3, 6, 7} {
			v, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%w: /proc/stat cpu line %q", errParse, line)
			}
			sum += v
		}
		return sum, nil
	}
	return 0, fmt.Errorf("%w: /proc/stat has no cpu line", errParse)
}

// kernelCoresSince returns the cores the kernel used (system, irq and
// softirq time of the whole machine) between a and s.
func (s cpuSample) kernelCoresSince(a cpuSample) float64 {
	dt := float64(s.total - a.total)
	if dt <= 0 {
		return 0
	}
	return float64(s.ncpu) * float64(s.kernel-a.kernel) / dt
}

// procCPUTicks returns utime+stime of pid (all its threads), in USER_HZ.
func procCPUTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parsePIDStat(b)
}

// parsePIDStat reads utime (field 14) and stime (field 15) of
// /proc/<pid>/stat. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from its last ')'.
func parsePIDStat(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%w: /proc/pid/stat %q", errParse, b)
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("%w: /proc/pid/stat has %d fields", errParse, len(f)+2)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%w: /proc/pid/stat utime %q stime %q", errParse, f[11], f[12])
	}
	return ut + st, nil
}

// coresSince returns the cores used by the machine and by the sampled
// processes between a and s.
func (s cpuSample) coresSince(a cpuSample) (machine, procs float64) {
	dt := float64(s.total - a.total)
	if dt <= 0 {
		return 0, 0
	}
	n := float64(s.ncpu)
	return n * float64(s.busy-a.busy) / dt, n * float64(s.procs-a.procs) / dt
}

// procStatusKiB returns a "Vm*:" field of /proc/<pid>/status in KiB.
func procStatusKiB(pid int, field string) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseStatusKiB(b, field)
}

func parseStatusKiB(b []byte, field string) (uint64, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		v, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			break
		}
		return strconv.ParseUint(f[0], 10, 64)
	}
	return 0, fmt.Errorf("%w: /proc/pid/status has no %s", errParse, field)
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() [3]float64 {
	var la [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return la
	}
	f := strings.Fields(string(b))
	for i := 0; i < 3 && i < len(f); i++ {
		la[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return la
}
