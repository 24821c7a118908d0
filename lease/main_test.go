package lease

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"overlay/lease/etcdembed"
	"overlay/lease/leasetest"
)

// childEnv makes the test binary run an embedded etcd instead of tests, so
// that benchmarks measure the client's time and memory without the server's
// allocations mixed in.
const childEnv = "OVERLAY_LEASE_ETCD_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		runEtcdChild(spec)
		return
	}
	m.Run()
}

// runEtcdChild serves etcd until its stdin is closed (the parent is done or
// died).
func runEtcdChild(spec string) {
	f := strings.Fields(spec)
	if len(f) != 3 {
		fmt.Fprintln(os.Stderr, "bad", childEnv, spec)
		return
	}
	s, err := etcdembed.Start(context.Background(), etcdembed.Options{Dir: f[0], ClientURL: f[1], PeerURL: f[2], UnsafeNoFsync: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	s.Close()
}

// startEtcdProcess runs etcd in a child process and returns its client URL.
func startEtcdProcess(tb testing.TB) string {
	tb.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d", leasetest.FreePort(tb))
	spec := fmt.Sprintf("%s %s http://127.0.0.1:%d", tb.TempDir(), url, leasetest.FreePort(tb))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+spec)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := make(chan struct{})
	tb.Cleanup(func() {
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := false
		for sc.Scan() {
			if sc.Text() == "ready" && !ok {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
		cmd.Wait()
		close(exited)
	}()
	select {
	case ok := <-ready:
		if !ok {
			tb.Fatal("etcd child process failed to start")
		}
	case <-time.After(60 * time.Second):
		tb.Fatal("etcd child process not ready after 60 s")
	}
	return url
}
