package floor_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"overlay/benchmarks/floor"
)

// TestMain lets the test binary run the relay as overlay-bench does.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == floor.Arg {
		os.Exit(floor.Command(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root for network namespaces, TUN and VXLAN devices (CI runs the tests as root)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipping: no TUN support: %v", err)
	}
}

func run(t *testing.T, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// TestFloorKernelVXLAN checks that the floor relay speaks VXLAN on the
// wire: a relay in node a and a kernel VTEP configured as flannel.1 in node
// b carry pings of small and MTU-sized packets both ways, and TCP both
// ways (the relay's TSO segmentation out, its coalescing in); also with
// the zero-copy sender of super-packets, without coalescing, and with the
// TUN read through io_uring (multishot and single-shot); the relay stops
// at SIGTERM, with status 0.
func TestFloorKernelVXLAN(t *testing.T) {
	requireRoot(t)
	for _, flags := range [][]string{nil, {"--sendmsg"}, {"--zerocopy"}, {"--no-coalesce"}, {"--txqueuelen", "64", "--pace", "50us"}, {"--epoll"}, {"--uring"}, {"--uring-single"}} {
		t.Run(strings.Join(append([]string{"flags"}, flags...), ""), func(t *testing.T) { floorKernelVXLAN(t, flags) })
	}
}

func floorKernelVXLAN(t *testing.T, flags []string) {
	var r [3]byte
	rand.Read(r[:])
	tag := hex.EncodeToString(r[:])
	a, b := "ovl-fl-a-"+tag, "ovl-fl-b-"+tag
	for _, ns := range []string{a, b} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
				for _, pid := range strings.Fields(string(out)) {
					exec.Command("kill", "-9", pid).Run()
				}
			}
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("delete namespace %s: %v: %s", ns, err, out)
			}
		})
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "link", "add", "fl-va-"+tag, "netns", a, "type", "veth", "peer", "name", "fl-vb-"+tag, "netns", b)
	for _, c := range [][]string{
		{"-n", a, "addr", "add", "172.30.250.1/24", "dev", "fl-va-" + tag},
		{"-n", a, "link", "set", "fl-va-" + tag, "up"},
		{"-n", b, "addr", "add", "172.30.250.2/24", "dev", "fl-vb-" + tag},
		{"-n", b, "link", "set", "fl-vb-" + tag, "up"},
		// Node b: flannel.1 as flannel's vxlan backend makes it.
		{"-n", b, "link", "add", "flannel.1", "address", "02:00:0a:f4:02:00", "type", "vxlan", "id", "1",
			"local", "172.30.250.2", "dev", "fl-vb-" + tag, "dstport", "8472", "nolearning"},
		{"-n", b, "link", "set", "flannel.1", "mtu", "1450", "up"},
		{"-n", b, "addr", "add", "10.244.2.0/32", "dev", "flannel.1"},
		{"-n", b, "neigh", "replace", "10.244.1.0", "lladdr", "02:00:0a:f4:01:00", "dev", "flannel.1", "nud", "permanent"},
		{"-n", b, "route", "replace", "10.244.1.0/24", "via", "10.244.1.0", "dev", "flannel.1", "onlink"},
	} {
		run(t, append([]string{"ip"}, c...)...)
	}
	run(t, "ip", "netns", "exec", b, "bridge", "fdb", "append", "02:00:0a:f4:01:00", "dev", "flannel.1", "dst", "172.30.250.1")

	// Node a: the floor relay.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	relay := exec.Command("ip", append([]string{"netns", "exec", a, exe, floor.Arg, "--tun", "fl-tun0", "--mtu", "1450",
		"--local", "172.30.250.1:8472", "--peer", "172.30.250.2:8472",
		"--mac", "02:00:0a:f4:01:00", "--peer-mac", "02:00:0a:f4:02:00"}, flags...)...)
	stdout, err := relay.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	relay.Stderr = &stderr
	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		relay.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- relay.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("relay after SIGTERM: %v, want exit status 0", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("relay still running 5 s after SIGTERM")
			relay.Process.Kill()
			<-done
		}
		if s := stderr.String(); s != "" {
			t.Logf("relay stderr:\n%s", s)
		}
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == floor.ReadyLine {
				ready <- true
			}
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("relay exited before it was ready: %s", stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("relay not ready after 30 s")
	}
	for _, c := range [][]string{
		{"-n", a, "link", "set", "fl-tun0", "up"},
		{"-n", a, "addr", "add", "10.244.1.0/32", "dev", "fl-tun0"},
		{"-n", a, "route", "replace", "10.244.2.0/24", "dev", "fl-tun0", "src", "10.244.1.0"},
	} {
		run(t, append([]string{"ip"}, c...)...)
	}

	for i, f := range flags {
		if f == "--txqueuelen" {
			if out := run(t, "ip", "-n", a, "link", "show", "fl-tun0"); !strings.Contains(out, "qlen "+flags[i+1]) {
				t.Errorf("fl-tun0 after --txqueuelen %s:\n%s", flags[i+1], out)
			}
		}
	}
	for _, size := range []string{"56", "1400"} {
		run(t, "ip", "netns", "exec", a, "ping", "-c", "3", "-i", "0.2", "-W", "2", "-s", size, "10.244.2.0")
		run(t, "ip", "netns", "exec", b, "ping", "-c", "3", "-i", "0.2", "-W", "2", "-s", size, "10.244.1.0")
	}
	// TCP both ways: 16 MiB from a (TSO super-packets cut by the relay),
	// then 16 MiB from b (coalesced by the relay into the TUN).
	srv := exec.Command("ip", "netns", "exec", b, "iperf3", "-s", "-p", "5211", "-B", "10.244.2.0")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := exec.Command("ip", "netns", "exec", b, "ss", "-Htln", "sport", "= :5211").Output()
		if strings.TrimSpace(string(out)) != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("iperf3 server not listening after 10 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, dir := range [][]string{nil, {"-R"}} {
		out := run(t, append([]string{"ip", "netns", "exec", a, "iperf3", "-c", "10.244.2.0", "-p", "5211", "-n", "16M", "--connect-timeout", "5000"}, dir...)...)
		if !strings.Contains(out, "receiver") {
			t.Fatalf("iperf3 %v did not finish:\n%s", dir, out)
		}
	}
}
