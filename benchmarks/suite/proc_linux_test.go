package suite

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	in := "cpu  100 5 50 800 20 3 7 2 9 0\ncpu0 50 2 25 400 10 1 3 1 4 0\ncpu1 50 3 25 400 10 2 4 1 5 0\nintr 1 2 3\nctxt 42\n"
	busy, total, ncpu, err := parseProcStat([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	// total = user..steal (guest is inside user); busy = total - idle - iowait.
	if total != 987 || busy != 987-800-20 || ncpu != 2 {
		t.Errorf("busy %d total %d ncpu %d, want 167 987 2", busy, total, ncpu)
	}
	for _, bad := range []string{"", "cpu 1 2 3\ncpu0 1 2 3\n", "intr 1\n", "cpu a b c d e f g h\ncpu0 1\n"} {
		if _, _, _, err := parseProcStat([]byte(bad)); !errors.Is(err, errParse) {
			t.Errorf("parseProcStat(%q): err = %v, want errParse", bad, err)
		}
	}
}

func TestParsePIDStat(t *testing.T) {
	// A command name with spaces and a ')' must not shift the fields.
	in := "4242 (over lay) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 567 0 0 20 0 9 0 100 1000000 300 18446744073709551615\n"
	got, err := parsePIDStat([]byte(in))
	if err != nil || got != 1234+567 {
		t.Errorf("got %d, %v; want 1801", got, err)
	}
	if _, err := parsePIDStat([]byte("4242 (x) S 1 2")); !errors.Is(err, errParse) {
		t.Errorf("short stat: err = %v, want errParse", err)
	}
	// The real file of this process parses.
	if _, err := procCPUTicks(os.Getpid()); err != nil {
		t.Errorf("own /proc/self/stat: %v", err)
	}
}

func TestParseStatusKiB(t *testing.T) {
	in := "Name:\toverlay\nVmPeak:\t  20000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t    9000 kB\n"
	if got, err := parseStatusKiB([]byte(in), "VmHWM"); err != nil || got != 12345 {
		t.Errorf("VmHWM = %d, %v; want 12345", got, err)
	}
	if _, err := parseStatusKiB([]byte(in), "VmSwap"); !errors.Is(err, errParse) {
		t.Errorf("missing field: err = %v, want errParse", err)
	}
	if kib, err := procStatusKiB(os.Getpid(), "VmHWM"); err != nil || kib == 0 {
		t.Errorf("own VmHWM = %d, %v", kib, err)
	}
}

func TestCoresSince(t *testing.T) {
	a := cpuSample{busy: 100, total: 1000, procs: 10, ncpu: 2}
	b := cpuSample{busy: 400, total: 1400, procs: 110, ncpu: 2}
	m, p := b.coresSince(a)
	// 400 ticks over 2 CPUs = 200 ticks of wall time; 300 busy = 1.5 cores, 100 = 0.5.
	if m != 1.5 || p != 0.5 {
		t.Errorf("machine %v agents %v, want 1.5 0.5", m, p)
	}
	if m, p := a.coresSince(a); m != 0 || p != 0 {
		t.Errorf("empty interval: %v %v, want 0 0", m, p)
	}
}

func TestKernelTicks(t *testing.T) {
	in := "cpu  100 5 30 1000 7 2 11 0 0 0\ncpu0 50 2 15 500 3 1 5 0 0 0\ncpu1 50 3 15 500 4 1 6 0 0 0\n"
	got, err := kernelTicks([]byte(in))
	if err != nil || got != 30+2+11 {
		t.Errorf("kernelTicks = %d, %v; want 43 (system 30 + irq 2 + softirq 11)", got, err)
	}
	if _, err := kernelTicks([]byte("cpu0 1 2 3 4 5 6 7 8\n")); !errors.Is(err, errParse) {
		t.Errorf("kernelTicks without a cpu line: err = %v, want errParse", err)
	}
	if _, err := kernelTicks([]byte("cpu 1 2 x 4 5 6 7 8\n")); !errors.Is(err, errParse) {
		t.Errorf("kernelTicks with a bad field: err = %v, want errParse", err)
	}
	a := cpuSample{total: 1000, kernel: 100, ncpu: 2}
	b := cpuSample{total: 1400, kernel: 200, ncpu: 2}
	if c := b.kernelCoresSince(a); c != 0.5 {
		t.Errorf("kernelCoresSince = %v, want 0.5 (100 of 400 ticks on 2 CPUs)", c)
	}
}

// TestOnCPU starts a real process through onCPU (as the suite starts the
// servers with Config.AppCPUs) and reads its affinity back from /proc.
func TestOnCPU(t *testing.T) {
	if _, err := exec.LookPath("taskset"); err != nil {
		t.Skip("needs taskset (apt-get install util-linux)")
	}
	if got := onCPU(-1, "sleep", "5"); len(got) != 2 {
		t.Errorf("onCPU(-1) = %q, want the argv unchanged", got)
	}
	cpu := runtime.NumCPU() - 1
	p, err := startProcess("sleeper", "", filepath.Join(t.TempDir(), "log"), onCPU(cpu, "sleep", "5")...)
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	want := fmt.Sprint(cpu)
	var got string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		// Until taskset has exec'd sleep, the process may still be taskset
		// (already pinned: it sets the affinity before exec).
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid()))
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
				got = strings.TrimSpace(v)
			}
		}
		if got == want {
			return
		}
	}
	t.Errorf("pinned process's Cpus_allowed_list = %q, want %q", got, want)
}
