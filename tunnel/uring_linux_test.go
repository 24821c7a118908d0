package tunnel_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"overlay/encap"
	"overlay/routes"
	"overlay/tunnel"
)

// TestTUNRing reads packets the kernel routes into a real TUN through the
// io_uring ring, in both of its read modes: UDP datagrams of many sizes
// sent in the TUN's namespace to an address behind it come back through
// the ring whole and in order, behind a virtio-net header; reading and
// releasing does not allocate; and Close wakes a Read waiting in the
// kernel.
func TestTUNRing(t *testing.T) {
	requireRoot(t)
	for _, multi := range []bool{false, true} {
		t.Run(fmt.Sprintf("multishot=%v", multi), func(t *testing.T) { testTUNRing(t, multi) })
	}
}

func testTUNRing(t *testing.T, multi bool) {
	ns := newNamespace(t, "uring")
	var (
		dev  tunnel.Device
		conn *net.UDPConn
	)
	dst := netip.MustParseAddrPort("10.244.78.2:4789")
	ns.do(t, func() error {
		var err error
		if dev, _, err = tunnel.OpenTUN(tunnel.TUNOptions{Name: devName, MTU: mtu, Driver: tunnel.DriverOffload}); err != nil {
			return err
		}
		if _, err = routes.ConfigureLink(routes.LinkConfig{Name: devName, MTU: mtu,
			Addr: netip.MustParsePrefix("10.244.78.1/32"), Network: netip.MustParsePrefix("10.244.78.0/24")}); err != nil {
			return err
		}
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 244, 78, 1)})
		return err
	})
	t.Cleanup(func() { conn.Close(); dev.Close() })

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const headroom = encap.Headroom - tunnel.VnetHdrLen
	ring, err := tunnel.NewTUNRing(dev, tunnel.TUNRingOptions{Slots: 64, Headroom: headroom, Multishot: multi})
	if err != nil {
		t.Fatal(err)
	}
	freed := false
	defer func() {
		if !freed {
			ring.Free()
		}
	}()

	send := func(i int) []byte {
		p := make([]byte, 4+(i*37)%1400)
		for k := range p {
			p[k] = byte(i + k)
		}
		binary.BigEndian.PutUint32(p, uint32(i))
		if _, err := conn.WriteToUDPAddrPort(p, dst); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// next reads the next UDP datagram to dst through the ring, skipping
	// what else the kernel sends into the TUN (IPv6 solicitations).
	next := func() (payload []byte, slot int) {
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			slot, n, err := ring.Read(true)
			if err != nil {
				t.Fatal(err)
			}
			b := ring.Slot(slot)[headroom : headroom+n]
			if n < tunnel.VnetHdrLen+28 {
				ring.Release(slot)
				continue
			}
			vnet, pkt := b[:tunnel.VnetHdrLen], b[tunnel.VnetHdrLen:]
			if pkt[0] != 0x45 || pkt[9] != 17 || binary.BigEndian.Uint16(pkt[22:]) != dst.Port() {
				ring.Release(slot)
				continue
			}
			if tunnel.IsGSO(vnet) {
				t.Fatalf("a %d-byte datagram came as a GSO packet", len(pkt))
			}
			return pkt[28:], slot
		}
		t.Fatal("no datagram through the ring in 5 s")
		return nil, 0
	}

	// Bursts larger than the ring hold, read back one by one, and one
	// packet at a time.
	for round, burst := range []int{1, 40, 200, 1, 1} {
		want := make([][]byte, burst)
		for i := range want {
			want[i] = send(round*1000 + i)
		}
		for i, w := range want {
			got, slot := next()
			if string(got) != string(w) {
				t.Fatalf("round %d: datagram %d: got %d bytes (%x...), want %d (%x...)",
					round, i, len(got), got[:min(8, len(got))], len(w), w[:min(8, len(w))])
			}
			ring.Release(slot)
		}
	}
	// Holding slots while reading more: a batch as the floor takes it.
	for i := range 30 {
		send(5000 + i)
	}
	var held []int
	for range 30 {
		_, slot := next()
		held = append(held, slot)
	}
	for _, s := range held {
		ring.Release(s)
	}
	if _, n, err := ring.Read(false); err != nil || n != 0 {
		t.Fatalf("Read without wait on an empty TUN: %d bytes, %v", n, err)
	}

	for i := range 60 {
		send(6000 + i)
	}
	step := func() {
		_, slot := next()
		ring.Release(slot)
	}
	if allocs := testing.AllocsPerRun(50, step); allocs != 0 {
		t.Errorf("ring Read+Release: %v allocations per packet, want 0", allocs)
	}
	for range 9 {
		step()
	}

	t.Logf("-EAGAIN completions on the O_NONBLOCK TUN: %d", ring.EAGAINs)

	// Close wakes a Read sleeping in io_uring_enter.
	done := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		done <- ring.Close()
	}()
	start := time.Now()
	_, _, err = ring.Read(true)
	if !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read after Close: %v, want os.ErrClosed", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > 3*time.Second {
		t.Errorf("Read returned %v after it started, want about 100 ms (the Close)", d)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ring.Free()
	freed = true
	if _, _, err := ring.Read(false); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read after Free: %v, want os.ErrClosed", err)
	}
	// Free gives up the ring's reference to the TUN: once the device is
	// closed too, the link is gone at once, not after the ring's
	// asynchronous teardown.
	dev.Close()
	ns.do(t, func() error {
		if l, err := netlink.LinkByName(devName); err == nil {
			return fmt.Errorf("TUN %s (index %d) still exists after Free and Close", devName, l.Attrs().Index)
		}
		return nil
	})
}
