package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// netnsDir is where `ip netns` keeps its named namespaces.
const netnsDir = "/run/netns"

// NS is a named network namespace (one `ip netns` knows). The zero value
// means none; methods are safe for concurrent use.
type NS string

// addNS creates the named namespace and brings its loopback up.
func addNS(ctx context.Context, name string) (NS, error) {
	if out, err := command(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return "", fmt.Errorf("ip netns add %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	ns := NS(name)
	err := ns.netlink(func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
	if err != nil {
		_ = ns.delete(context.Background())
		return "", fmt.Errorf("namespace %s: loopback up: %w", name, err)
	}
	return ns, nil
}

// delete removes the namespace's name. The namespace itself goes away once
// no process and no open descriptor holds it any more.
func (ns NS) delete(ctx context.Context) error {
	if ns == "" {
		return nil
	}
	out, err := command(ctx, "ip", "netns", "delete", string(ns)).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("ip netns delete %s: %w: %s", ns, err, bytes.TrimSpace(out))
	}
	return nil
}

// Do runs fn on an OS thread that is inside the namespace. The calling
// goroutine's thread never changes namespace: fn runs on a fresh goroutine,
// locked to its thread, which switches back afterwards. If switching back
// fails the thread stays locked and the runtime discards it.
//
// Sockets created by fn stay in the namespace after Do returns.
func (ns NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(string(ns))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("namespace %s: %w", ns, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("leave namespace %s: %w", ns, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// netlink runs fn with a netlink handle whose socket is in the namespace.
func (ns NS) netlink(fn func(h *netlink.Handle) error) error {
	nsh, err := netns.GetFromName(string(ns))
	if err != nil {
		return fmt.Errorf("namespace %s: %w", ns, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", ns, err)
	}
	defer h.Close()
	return fn(h)
}

// DialContext connects from inside the namespace. It has the signature of
// net.Dialer.DialContext, for http.Transport and grpc dialers.
func (ns NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen opens a listener inside the namespace.
func (ns NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := ns.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ListenPacket opens a packet socket inside the namespace.
func (ns NS) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := ns.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, addr)
		return err
	})
	return c, err
}

// Command returns a command that runs inside the namespace through
// `ip netns exec`.
func (ns NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return command(ctx, "ip", append([]string{"netns", "exec", string(ns), name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output;
// a failure's error includes the output.
func (ns NS) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := ns.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %s %s: %w: %s", ns, name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// sysctl writes a net.* sysctl of the namespace, e.g. "net/ipv4/ip_forward".
// /proc/sys/net shows the opening thread's network namespace.
func (ns NS) sysctl(key, value string) error {
	return ns.Do(func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	})
}

// pids lists the processes inside the namespace.
func (ns NS) pids(ctx context.Context) ([]int, error) {
	out, err := command(ctx, "ip", "netns", "pids", string(ns)).Output()
	if err != nil {
		return nil, fmt.Errorf("ip netns pids %s: %w", ns, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// command is exec.CommandContext with the harness's process defaults: own
// process group (a terminal's Ctrl-C reaches only the harness), SIGKILL when
// the harness dies, and SIGTERM rather than SIGKILL when ctx ends.
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}
