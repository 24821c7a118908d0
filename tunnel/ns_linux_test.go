package tunnel_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"overlay/encap"
	"overlay/routes"
	"overlay/tunnel"
)

// Real-device tests: nodes are network namespaces joined by a veth pair on
// the underlay 172.30.250.0/24; pods are the overlay addresses of the nodes'
// TUN (or vxlan) devices in 10.244.0.0/16. Names start with ovl-tn-.

// requireRoot skips the test unless it can create network namespaces, TUN
// devices and veth pairs: as root, with /dev/net/tun.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root for network namespaces and TUN devices (CI runs the tests as root)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipping: no TUN support: %v", err)
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Skipf("skipping: no network namespaces: %v", err)
	}
}

type namespace struct {
	name string
	h    netns.NsHandle
}

// newNamespace creates a named network namespace with lo up, deleted when
// the test ends.
func newNamespace(t testing.TB, tag string) *namespace {
	t.Helper()
	var b [3]byte
	rand.Read(b[:])
	name := "ovl-tn-" + tag + "-" + hex.EncodeToString(b[:])
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		t.Skipf("skipping: cannot create a network namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		panic("cannot return to the original network namespace: " + err.Error())
	}
	ns := &namespace{name: name, h: h}
	t.Cleanup(func() {
		h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	ns.do(t, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return ns
}

// do runs fn on a thread inside the namespace. Sockets and devices it
// creates stay in the namespace afterwards, whichever thread uses them.
func (ns *namespace) do(t testing.TB, fn func() error) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(ns.h); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("enter %s: %v", ns.name, err)
	}
	err = fn()
	if serr := netns.Set(orig); serr != nil {
		// Leave the thread locked: the runtime discards it with the
		// goroutine rather than reuse a thread in the wrong namespace.
		t.Fatalf("leave %s: %v", ns.name, serr)
	}
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("in %s: %v", ns.name, err)
	}
}

// Underlay and overlay plan of the two-node tests.
var (
	underlayA = netip.MustParseAddr("172.30.250.1")
	underlayB = netip.MustParseAddr("172.30.250.2")
	subnetA   = netip.MustParsePrefix("10.244.1.0/24")
	subnetB   = netip.MustParsePrefix("10.244.2.0/24")
	network   = netip.MustParsePrefix("10.244.0.0/16")
	podA      = netip.MustParseAddr("10.244.1.0") // the node's own overlay address
	podB      = netip.MustParseAddr("10.244.2.0")
)

const (
	vethA   = "ovl-tn-va"
	vethB   = "ovl-tn-vb"
	devName = "ovl-tn0"
	mtu     = 1450
)

// pair creates two namespaces joined by a veth pair carrying the underlay.
func pair(t testing.TB) (a, b *namespace) {
	t.Helper()
	requireRoot(t)
	a, b = newNamespace(t, "a"), newNamespace(t, "b")
	a.do(t, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: vethA, MTU: 1500}, PeerName: vethB, PeerNamespace: netlink.NsFd(int(b.h))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		return upWithAddr(vethA, netip.PrefixFrom(underlayA, 24))
	})
	b.do(t, func() error { return upWithAddr(vethB, netip.PrefixFrom(underlayB, 24)) })
	return a, b
}

func upWithAddr(name string, p netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
	if err := netlink.AddrAdd(l, addr); err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// nodeConfig describes one end.
type nodeConfig struct {
	underlay netip.Addr
	subnet   netip.Prefix
	mac      encap.MAC
	// peer
	peerUnderlay netip.Addr
	peerSubnet   netip.Prefix
	peerMAC      encap.MAC
}

var (
	cfgA = nodeConfig{underlayA, subnetA, encap.MAC{0x02, 0x0a, 0, 0, 0, 1}, underlayB, subnetB, encap.MAC{0x02, 0x0b, 0, 0, 0, 2}}
	cfgB = nodeConfig{underlayB, subnetB, encap.MAC{0x02, 0x0b, 0, 0, 0, 2}, underlayA, subnetA, encap.MAC{0x02, 0x0a, 0, 0, 0, 1}}
)

// flavour is a datapath under test.
type flavour struct {
	name   string
	driver tunnel.Driver
	naive  bool
	kernel bool // kernel vxlan, configured like flannel.1
	// ownPoller: the TUN and the sockets wait in epoll instances of
	// their own on locked pump threads (epoll_linux.go).
	ownPoller bool
}

var (
	offloadFlavour = flavour{name: "offload", driver: tunnel.DriverOffload}
	plainFlavour   = flavour{name: "plain", driver: tunnel.DriverPlain}
	naiveFlavour   = flavour{name: "naive", driver: tunnel.DriverPlain, naive: true}
	kernelFlavour  = flavour{name: "kernel", kernel: true}
	epollFlavour   = flavour{name: "epoll", driver: tunnel.DriverOffload, ownPoller: true}
)

// startNode brings up one end in ns: a tunnel, or kernel vxlan.
func startNode(t testing.TB, ns *namespace, cfg nodeConfig, fl flavour) *tunnel.Tunnel {
	t.Helper()
	if fl.kernel {
		startKernelVXLAN(t, ns, cfg)
		return nil
	}
	var (
		dev  tunnel.Device
		mode tunnel.Mode
		conn tunnel.Conn
		link *routes.Link
	)
	ns.do(t, func() error {
		var err error
		dev, mode, err = tunnel.OpenTUN(tunnel.TUNOptions{Name: devName, MTU: mtu, Driver: fl.driver, Naive: fl.naive, OwnPoller: fl.ownPoller})
		if err != nil {
			return err
		}
		conn, err = tunnel.ListenUDP(tunnel.UDPOptions{Addr: netip.AddrPortFrom(cfg.underlay, encap.PortLinux), Naive: fl.naive, SteerChecksums: true, OwnPoller: fl.ownPoller})
		if err != nil {
			dev.Close()
			return err
		}
		link, err = routes.ConfigureLink(routes.LinkConfig{Name: devName, MTU: mtu, Addr: netip.PrefixFrom(cfg.subnet.Addr(), 32), Network: network})
		if err != nil {
			dev.Close()
			conn.Close()
		}
		return err
	})
	if want := map[tunnel.Driver]tunnel.Mode{tunnel.DriverOffload: tunnel.ModeOffload, tunnel.DriverPlain: tunnel.ModePlain}[fl.driver]; mode != want {
		t.Fatalf("OpenTUN(%s) gave mode %v", fl.driver, mode)
	}
	var table routes.Table
	if err := table.Update([]netip.Prefix{cfg.subnet}, []routes.Peer{{Subnet: cfg.peerSubnet, Endpoint: netip.AddrPortFrom(cfg.peerUnderlay, encap.PortLinux), MAC: cfg.peerMAC}}); err != nil {
		t.Fatal(err)
	}
	tun, err := tunnel.New(tunnel.Options{Device: dev, Conn: conn, Table: &table, VNI: 1, LocalMAC: cfg.mac, MTU: mtu, Naive: fl.naive, Logger: quietLogger()})
	if err != nil {
		dev.Close()
		conn.Close()
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- tun.Run(context.Background()) }()
	t.Cleanup(func() {
		if err := tun.Close(); err != nil {
			t.Errorf("close tunnel: %v", err)
		}
		if err := <-errc; err != nil {
			t.Errorf("tunnel Run: %v", err)
		}
		if err := link.Remove(); err != nil {
			t.Errorf("remove link config: %v", err)
		}
	})
	return tun
}

// startKernelVXLAN configures a kernel VTEP as flannel configures
// flannel.1: vxlan id 1 on the underlay device, dstport 8472, nolearning,
// the subnet's .0/32, and static neighbour, FDB and onlink route entries
// for the peer.
func startKernelVXLAN(t testing.TB, ns *namespace, cfg nodeConfig) {
	t.Helper()
	ns.do(t, func() error {
		under, err := netlink.LinkByName(map[netip.Addr]string{underlayA: vethA, underlayB: vethB}[cfg.underlay])
		if err != nil {
			return err
		}
		vx := &netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: devName, MTU: mtu, HardwareAddr: cfg.mac.HardwareAddr()},
			VxlanId:      1,
			VtepDevIndex: under.Attrs().Index,
			SrcAddr:      cfg.underlay.AsSlice(),
			Port:         encap.PortLinux,
			Learning:     false,
		}
		if err := netlink.LinkAdd(vx); err != nil {
			return fmt.Errorf("add vxlan: %w", err)
		}
		if err := upWithAddr(devName, netip.PrefixFrom(cfg.subnet.Addr(), 32)); err != nil {
			return err
		}
		l, err := netlink.LinkByName(devName)
		if err != nil {
			return err
		}
		idx := l.Attrs().Index
		peerGW := cfg.peerSubnet.Addr()
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST, IP: peerGW.AsSlice(), HardwareAddr: cfg.peerMAC.HardwareAddr()}); err != nil {
			return fmt.Errorf("neighbour: %w", err)
		}
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF, IP: cfg.peerUnderlay.AsSlice(), HardwareAddr: cfg.peerMAC.HardwareAddr()}); err != nil {
			return fmt.Errorf("fdb: %w", err)
		}
		dst := &net.IPNet{IP: cfg.peerSubnet.Addr().AsSlice(), Mask: net.CIDRMask(cfg.peerSubnet.Bits(), 32)}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: dst, Gw: peerGW.AsSlice(), Flags: int(netlink.FLAG_ONLINK)})
	})
}

// ping runs the system ping from ns to dst and fails the test if no reply
// comes back.
func ping(t testing.TB, ns *namespace, dst netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns.name, "ping", "-c", "3", "-i", "0.2", "-W", "5", dst.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("ping %v from %s: %v\n%s", dst, ns.name, err, out)
	}
}

// transfer sends size bytes of random data over TCP from ns "from" to a
// listener on dst in ns "to", and checks the SHA-256 of what arrived.
func transfer(t testing.TB, from, to *namespace, dst netip.Addr, size int64) time.Duration {
	t.Helper()
	var ln net.Listener
	to.do(t, func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(dst, 0).String())
		return err
	})
	defer ln.Close()
	type result struct {
		sum []byte
		n   int64
		err error
	}
	resc := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			resc <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Minute))
		h := sha256.New()
		n, err := io.Copy(h, c)
		resc <- result{h.Sum(nil), n, err}
	}()
	var c net.Conn
	from.do(t, func() error {
		var err error
		d := net.Dialer{Timeout: 20 * time.Second}
		c, err = d.Dial("tcp4", ln.Addr().String())
		return err
	})
	c.SetDeadline(time.Now().Add(3 * time.Minute))
	h := sha256.New()
	rng := mrand.NewChaCha8([32]byte{1})
	buf := make([]byte, 256<<10)
	begin := time.Now()
	for left := size; left > 0; {
		chunk := buf[:min(int64(len(buf)), left)]
		rng.Read(chunk)
		h.Write(chunk)
		if _, err := c.Write(chunk); err != nil {
			c.Close()
			t.Fatalf("send after %d of %d bytes: %v", size-left, size, err)
		}
		left -= int64(len(chunk))
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var res result
	select {
	case res = <-resc:
	case <-time.After(3 * time.Minute):
		t.Fatal("receiver did not finish")
	}
	elapsed := time.Since(begin)
	c.Close()
	if res.err != nil {
		t.Fatalf("receive: %v", res.err)
	}
	if res.n != size || string(res.sum) != string(h.Sum(nil)) {
		t.Fatalf("received %d bytes with SHA-256 %x; sent %d with %x", res.n, res.sum, size, h.Sum(nil))
	}
	return elapsed
}

func TestNamespaceTunnels(t *testing.T) {
	for _, fl := range []flavour{offloadFlavour, plainFlavour, naiveFlavour, epollFlavour} {
		t.Run(fl.name, func(t *testing.T) {
			a, b := pair(t)
			ta := startNode(t, a, cfgA, fl)
			tb := startNode(t, b, cfgB, fl)
			ping(t, a, podB)
			size := int64(100 << 20)
			if fl.naive {
				size = 20 << 20 // the floor is slow by design
			}
			d := transfer(t, a, b, podB, size)
			t.Logf("%s: %d MB in %v (%.0f Mbit/s)", fl.name, size>>20, d.Round(time.Millisecond), float64(size)*8/d.Seconds()/1e6)
			sa, sb := ta.Stats(), tb.Stats()
			t.Logf("A: %d packets out in %d batches; B: %d packets in in %d batches; %d acks back in %d batches",
				sa.Out.Packets, sa.Out.Batches, sb.In.Packets, sb.In.Batches, sa.In.Packets, sa.In.Batches)
			if sa.Out.Packets == 0 || sb.In.Packets == 0 || sa.In.Packets == 0 {
				t.Errorf("counters did not move: A out %d in %d, B in %d", sa.Out.Packets, sa.In.Packets, sb.In.Packets)
			}
			if (fl == offloadFlavour || fl == epollFlavour) && (sa.Mode != tunnel.ModeOffload || !sa.GSO || !sb.GRO) {
				t.Errorf("offload flavour without offloads: %+v", sa)
			}
			// Agents send an outer checksum: with steering, every
			// datagram B receives arrives on the checksummed socket.
			if want := !fl.naive; sb.ChecksumSteering != want || (want && sb.In.Checksummed == 0) {
				t.Errorf("B: checksum steering %v (want %v), %d datagrams checksummed of %d packets", sb.ChecksumSteering, want, sb.In.Checksummed, sb.In.Packets)
			}
			for _, s := range []tunnel.Stats{sa, sb} {
				for r, n := range s.In.Drops {
					if n != 0 {
						t.Errorf("%s: %d inbound drops (%v)", s.Device, n, r)
					}
				}
			}
		})
	}
}

// TestNamespaceKernelVXLAN checks wire compatibility: a tunnel and a kernel
// VTEP set up like flannel.1 carry ICMP and TCP both ways.
func TestNamespaceKernelVXLAN(t *testing.T) {
	for _, fl := range []flavour{offloadFlavour, plainFlavour, epollFlavour} {
		t.Run(fl.name, func(t *testing.T) {
			a, b := pair(t)
			ta := startNode(t, a, cfgA, fl)
			startNode(t, b, cfgB, kernelFlavour)
			ping(t, a, podB)
			ping(t, b, podA)
			transfer(t, a, b, podB, 32<<20)
			transfer(t, b, a, podA, 32<<20)
			s := ta.Stats()
			for r, n := range s.In.Drops {
				if n != 0 {
					t.Errorf("%d inbound drops (%v) from the kernel VTEP", n, r)
				}
			}
			if ps := ta.Stats(); ps.In.Unattributed != 0 {
				t.Errorf("%d packets from the kernel VTEP not attributed to it", ps.In.Unattributed)
			}
			// A vxlan device made as flannel makes flannel.1 (no
			// IFLA_VXLAN_UDP_CSUM) sends outer checksums on this
			// kernel (ip -d link shows udpcsum), so its datagrams are
			// steered to the trusted socket too;
			// TestNamespaceCorruptFrames covers the zero-checksum ones.
			if !s.ChecksumSteering {
				t.Error("checksum steering is off")
			}
			t.Logf("%d of the kernel VTEP's datagrams arrived checksummed (%d packets in)", s.In.Checksummed, s.In.Packets)
		})
	}
}

// TestNamespaceFromFD opens the TUN from a descriptor, as a rootless agent
// given one by a privileged helper would.
func TestNamespaceFromFD(t *testing.T) {
	requireRoot(t)
	ns := newNamespace(t, "fd")
	for _, vnet := range []bool{true, false} {
		ns.do(t, func() error {
			fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			ifr, _ := unix.NewIfreq("ovl-tn-fd")
			flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
			if vnet {
				flags |= unix.IFF_VNET_HDR
			}
			ifr.SetUint16(flags)
			if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
				unix.Close(fd)
				return err
			}
			dev, mode, err := tunnel.OpenTUN(tunnel.TUNOptions{FD: fd, MTU: 1400})
			if err != nil {
				return err
			}
			defer dev.Close()
			if want := map[bool]tunnel.Mode{true: tunnel.ModeOffload, false: tunnel.ModePlain}[vnet]; mode != want || dev.Name() != "ovl-tn-fd" || dev.MTU() != 1400 {
				return fmt.Errorf("from fd (vnet %v): mode %v name %q MTU %d", vnet, mode, dev.Name(), dev.MTU())
			}
			return nil
		})
	}
	ns.do(t, func() error {
		if _, _, err := tunnel.OpenTUN(tunnel.TUNOptions{FD: int(os.Stdout.Fd()) + 1000}); err == nil {
			return errors.New("OpenTUN accepted a descriptor that is not a TUN")
		}
		return nil
	})
}

// TestTUNDoesNotAllocate counts the allocations of a real TUN's Read and
// Write, as the pumps call them, in both drivers: an ICMP echo request
// written into the device comes back from the kernel as an echo reply to
// read.
func TestTUNDoesNotAllocate(t *testing.T) {
	requireRoot(t)
	for _, drv := range []tunnel.Driver{tunnel.DriverOffload, tunnel.DriverPlain} {
		t.Run(string(drv), func(t *testing.T) {
			ns := newNamespace(t, "alloc")
			var dev tunnel.Device
			ns.do(t, func() error {
				var err error
				if dev, _, err = tunnel.OpenTUN(tunnel.TUNOptions{Name: devName, MTU: mtu, Driver: drv}); err != nil {
					return err
				}
				_, err = routes.ConfigureLink(routes.LinkConfig{Name: devName, MTU: mtu,
					Addr: netip.MustParsePrefix("10.244.77.1/32"), Network: netip.MustParsePrefix("10.244.77.0/24")})
				return err
			})
			t.Cleanup(func() { dev.Close() })
			echo := make([]byte, 8+56)
			echo[0] = 8 // echo request
			binary.BigEndian.PutUint16(echo[4:], 0x77)
			binary.BigEndian.PutUint16(echo[2:], csum(echo, 0))
			req := ipv4("10.244.77.2", "10.244.77.1", 1, true, echo)
			wbufs := [][]byte{append(make([]byte, encap.Headroom), req...)}
			rbufs := [][]byte{make([]byte, encap.Headroom+65535)}
			sizes := []int{0}
			step := func() {
				if _, err := dev.Write(wbufs, encap.Headroom); err != nil {
					t.Fatal(err)
				}
				n, err := dev.Read(rbufs, sizes, encap.Headroom)
				if err != nil {
					t.Fatal(err)
				}
				reply := rbufs[0][encap.Headroom : encap.Headroom+sizes[0]]
				if n != 1 || len(reply) != len(req) || reply[9] != 1 || reply[20] != 0 {
					t.Fatalf("read %d packets, %d bytes (proto %d, ICMP type %d); want the %d-byte echo reply",
						n, len(reply), reply[9], reply[20], len(req))
				}
			}
			step()
			if allocs := testing.AllocsPerRun(200, step); allocs != 0 {
				t.Errorf("Write+Read: %v allocations per echo, want 0", allocs)
			}
		})
	}
}
