package tunnel_test

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"overlay/routes"
	"overlay/tunnel"
)

// TestOwnPollerTUN reads a real offloading TUN through the own poller:
// echo requests written into the device come back as replies that a read
// sleeping in its waiter receives, without allocating; a read that waits
// for good is woken by Close within a bounded time; and a plain TUN
// refuses the own poller.
func TestOwnPollerTUN(t *testing.T) {
	requireRoot(t)
	ns := newNamespace(t, "epoll")
	var dev tunnel.Device
	ns.do(t, func() error {
		if _, _, err := tunnel.OpenTUN(tunnel.TUNOptions{Name: devName, MTU: mtu, Driver: tunnel.DriverPlain, OwnPoller: true}); err == nil {
			return errors.New("a plain TUN took the own poller")
		}
		var err error
		if dev, _, err = tunnel.OpenTUN(tunnel.TUNOptions{Name: devName, MTU: mtu, Driver: tunnel.DriverOffload, OwnPoller: true}); err != nil {
			return err
		}
		_, err = routes.ConfigureLink(routes.LinkConfig{Name: devName, MTU: mtu,
			Addr: netip.MustParsePrefix("10.244.78.1/32"), Network: netip.MustParsePrefix("10.244.78.0/24")})
		return err
	})
	closed := false
	t.Cleanup(func() {
		if !closed {
			dev.Close()
		}
	})
	vio, ok := tunnel.RawVnet(dev)
	if !ok {
		t.Fatal("no raw calls on an offloading TUN")
	}
	echo := make([]byte, 8+56)
	echo[0] = 8 // echo request
	binary.BigEndian.PutUint16(echo[4:], 0x78)
	binary.BigEndian.PutUint16(echo[2:], csum(echo, 0))
	req := ipv4("10.244.78.2", "10.244.78.1", 1, true, echo)
	vnet := make([]byte, tunnel.VnetHdrLen)
	pieces := [][]byte{vnet, req}
	buf := make([]byte, tunnel.VnetHdrLen+65535)
	step := func() {
		// Nothing is queued: a read without wait says so at once.
		if n, err := vio.Read(buf, false); err != nil || n != 0 {
			t.Fatalf("read without wait on an empty TUN: %d, %v", n, err)
		}
		if err := vio.Write(pieces); err != nil {
			t.Fatal(err)
		}
		n, err := vio.Read(buf, true)
		if err != nil {
			t.Fatal(err)
		}
		reply := buf[tunnel.VnetHdrLen:n]
		if len(reply) != len(req) || reply[9] != 1 || reply[20] != 0 {
			t.Fatalf("read %d bytes (proto %d, ICMP type %d); want the %d-byte echo reply", len(reply), reply[9], reply[20], len(req))
		}
	}
	runtime.LockOSThread()
	step()
	allocs := testing.AllocsPerRun(200, step)
	runtime.UnlockOSThread()
	if allocs != 0 {
		t.Errorf("Write+Read through the own poller: %v allocations per echo, want 0", allocs)
	}

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		_, err := vio.Read(buf, true)
		errc <- err
	}()
	select {
	case err := <-errc:
		t.Fatalf("a read on an idle TUN returned: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	start := time.Now()
	closed = true
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !isClosed(err) {
			t.Errorf("read after Close: %v, want a closed error", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not wake the read sleeping in the own poller within 2 s")
	}
	t.Logf("Close woke the read in %v", time.Since(start))
}

func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) }
