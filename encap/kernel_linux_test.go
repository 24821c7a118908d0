package encap

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The kernel interoperability test: a real Linux vxlan device, configured
// the way flannel configures flannel.1, exchanges a ping with this package.
//
//	namespace ovl-ec-XXXX ("kernel node")        namespace ovl-ec-XXXX-p ("userspace peer")
//	  ping 10.244.2.7                              UDP socket 172.30.250.2:8472
//	  ovl-ec-vx: vxlan id 1 dstport 8472             Decap the kernel's frame (echo request)
//	    nolearning, 10.244.1.0/32, MTU 1450          Encap an echo reply
//	    route 10.244.2.0/24 via 10.244.2.0 onlink
//	    neigh 10.244.2.0 lladdr <test MAC>
//	    fdb <test MAC> dst 172.30.250.2
//	  ovl-ec-u0 172.30.250.1/24 ============ veth ============ ovl-ec-u1 172.30.250.2/24
//
// Two namespaces because the kernel's vxlan socket binds 0.0.0.0:8472 in its
// namespace, so a second socket on port 8472 there fails with EADDRINUSE;
// it is also how two real nodes look. Both are created by the test, named
// with the package prefix, and deleted by name on cleanup.

const kernelTestPrefix = "ovl-ec-"

var (
	kernelUnderlay = netip.MustParsePrefix("172.30.250.1/24")
	peerUnderlay   = netip.MustParsePrefix("172.30.250.2/24")
	kernelVtepAddr = netip.MustParsePrefix("10.244.1.0/32")  // flannel puts the subnet's .0 on flannel.1
	peerSubnet     = netip.MustParsePrefix("10.244.2.0/24")  // the peer's pod subnet
	peerGateway    = netip.MustParseAddr("10.244.2.0")       // its VTEP address, the onlink gateway
	pingTarget     = netip.MustParseAddr("10.244.2.7")       // a "pod" behind the peer
	testVtepMAC    = MAC{0x02, 0x6f, 0x76, 0x6c, 0x65, 0x63} // locally administered
)

// requireRoot skips a test that needs root to create network namespaces
// and kernel devices; CI runs it as root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create network namespaces and a kernel vxlan device (CI runs this as root)")
	}
}

// skipIfMissing skips when err says the kernel lacks a facility (no VXLAN
// support, no namespaces) rather than that the test is wrong.
func skipIfMissing(t *testing.T, what string, err error) {
	t.Helper()
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EAFNOSUPPORT) {
		t.Skipf("skipping: this kernel cannot %s: %v", what, err)
	}
}

// onThreadIn runs fn on a locked OS thread switched into ns (or, with
// create, into a new namespace named create, returned as ns). The thread is
// switched back before it is unlocked; if that fails, it stays locked and
// dies with its goroutine, so no goroutine ever runs in a stray namespace.
func onThreadIn(ns netns.NsHandle, create string, fn func() error) (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{netns.None(), fmt.Errorf("get current namespace: %w", err)}
			return
		}
		defer orig.Close()
		res := result{ns: ns}
		if create != "" {
			res.ns, res.err = netns.NewNamed(create)
		} else {
			res.err = netns.Set(ns)
		}
		if res.err == nil && fn != nil {
			res.err = fn()
		}
		if err := netns.Set(orig); err != nil {
			res.err = errors.Join(res.err, fmt.Errorf("switch back to the original namespace: %w", err))
			done <- res // the thread stays locked and exits with this goroutine
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	r := <-done
	return r.ns, r.err
}

// newNamespace creates a named network namespace and deletes it by name on
// cleanup. It returns the namespace and a netlink handle inside it.
func newNamespace(t *testing.T, name string) (netns.NsHandle, *netlink.Handle) {
	t.Helper()
	ns, err := onThreadIn(netns.None(), name, nil)
	if err != nil {
		skipIfMissing(t, "create network namespaces", err)
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	t.Cleanup(h.Close)
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("%s: set lo up: %v", name, err)
	}
	return ns, h
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func mustNL(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// kernelNode is the namespace holding a flannel-style kernel VTEP.
type kernelNode struct {
	name string
	mac  MAC // the kernel vxlan device's own MAC (its VtepMAC)
}

// setupKernelNode builds both namespaces and returns the kernel node and
// the test's UDP socket in the peer namespace.
func setupKernelNode(t *testing.T) (kernelNode, *net.UDPConn) {
	t.Helper()
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	name := kernelTestPrefix + hex.EncodeToString(rnd[:])
	_, node := newNamespace(t, name)
	peerNS, peer := newNamespace(t, name+"-p")

	// The underlay: a veth pair across the two namespaces.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: kernelTestPrefix + "u0", MTU: 1500},
		PeerName:      kernelTestPrefix + "u1",
		PeerNamespace: netlink.NsFd(peerNS),
	}
	err := node.LinkAdd(veth)
	skipIfMissing(t, "create veth pairs", err)
	mustNL(t, "add veth", err)
	for _, side := range []struct {
		h    *netlink.Handle
		name string
		addr netip.Prefix
	}{{node, veth.Name, kernelUnderlay}, {peer, veth.PeerName, peerUnderlay}} {
		l, err := side.h.LinkByName(side.name)
		mustNL(t, "find "+side.name, err)
		mustNL(t, "address "+side.name, side.h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(side.addr)}))
		mustNL(t, "set up "+side.name, side.h.LinkSetUp(l))
	}
	u0, err := node.LinkByName(veth.Name)
	mustNL(t, "find "+veth.Name, err)

	// The VTEP, as flannel's vxlan backend creates flannel.1: VNI 1, port
	// 8472, learning off, the underlay address as source, and the MTU the
	// underlay leaves after our derived overhead.
	vx := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: kernelTestPrefix + "vx", MTU: 1500 - OverheadIPv4},
		VxlanId:      1,
		VtepDevIndex: u0.Attrs().Index,
		SrcAddr:      kernelUnderlay.Addr().AsSlice(),
		Port:         PortLinux,
		Learning:     false,
	}
	err = node.LinkAdd(vx)
	skipIfMissing(t, "create a vxlan device (CONFIG_VXLAN)", err)
	mustNL(t, "add vxlan device", err)
	link, err := node.LinkByName(vx.Name)
	mustNL(t, "find vxlan device", err)
	mustNL(t, "vxlan address", node.AddrAdd(link, &netlink.Addr{IPNet: ipNet(kernelVtepAddr)}))
	mustNL(t, "vxlan up", node.LinkSetUp(link))
	mac, err := MACFrom(link.Attrs().HardwareAddr)
	mustNL(t, "vxlan MAC", err)
	idx := link.Attrs().Index

	// flannel's per-peer programming: an onlink route to the peer's subnet
	// via its VTEP address, a permanent ARP entry for that address with the
	// peer's VtepMAC, and an FDB entry sending that MAC to the peer's
	// underlay address.
	mustNL(t, "route", node.RouteAdd(&netlink.Route{
		LinkIndex: idx, Dst: ipNet(peerSubnet), Gw: peerGateway.AsSlice(), Flags: int(netlink.FLAG_ONLINK),
	}))
	mustNL(t, "neighbour", node.NeighSet(&netlink.Neigh{
		LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST,
		IP: peerGateway.AsSlice(), HardwareAddr: testVtepMAC.HardwareAddr(),
	}))
	mustNL(t, "fdb", node.NeighSet(&netlink.Neigh{
		LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
		IP: peerUnderlay.Addr().AsSlice(), HardwareAddr: testVtepMAC.HardwareAddr(),
	}))

	// The test's VTEP socket, opened inside the peer namespace.
	var conn *net.UDPConn
	_, err = onThreadIn(peerNS, "", func() error {
		var err error
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(peerUnderlay.Addr(), PortLinux)))
		return err
	})
	mustNL(t, "listen on the peer's VXLAN port", err)
	t.Cleanup(func() { conn.Close() })
	return kernelNode{name: name, mac: mac}, conn
}

// exchange runs one `ping -c 1 -W wait` in the kernel node, receives the
// kernel's VXLAN frame on conn, and answers it with an echo reply that
// Encap addresses to inner destination MAC replyDst. It returns the kernel's
// frame, the outer source, and ping's output and verdict.
func exchange(t *testing.T, kn kernelNode, conn *net.UDPConn, wait time.Duration, replyDst MAC) (frame []byte, from netip.AddrPort, pingOut string, pingErr error) {
	t.Helper()
	pingPath, err := exec.LookPath("ping")
	if err != nil {
		t.Skip("skipping: no ping binary (make deps installs iputils-ping)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), wait+30*time.Second)
	defer cancel()
	ping := exec.CommandContext(ctx, "ip", "netns", "exec", kn.name, pingPath,
		"-n", "-c", "1", "-W", strconv.Itoa(int(wait/time.Second)), pingTarget.String())
	var out bytes.Buffer
	ping.Stdout, ping.Stderr = &out, &out
	mustNL(t, "start ping", ping.Start())
	pingDone := make(chan error, 1)
	go func() { pingDone <- ping.Wait() }()
	waited := false
	waitPing := func() error {
		err := <-pingDone
		waited = true
		return err
	}
	defer func() { // on every path, ping has exited before we return
		if !waited {
			cancel()
			_ = waitPing()
		}
	}()

	// Receive the kernel's frame; anything else the kernel might send to
	// our MAC is counted and skipped.
	buf := make([]byte, 64<<10)
	drops := map[string]int{}
	var request []byte
	mustNL(t, "deadline", conn.SetReadDeadline(time.Now().Add(wait+20*time.Second)))
	for request == nil {
		n, addr, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no echo request from the kernel (skipped %v): %v; ping says:\n%s", drops, err, out.String())
		}
		pkt, err := Decap(buf[:n], 1, testVtepMAC)
		switch {
		case err != nil:
			drops[err.Error()]++
		case len(pkt) >= IPv4HeaderLen+8 && pkt[0] == 0x45 && pkt[9] == 1 && pkt[IPv4HeaderLen] == 8:
			frame, request, from = buf[:n], pkt, addr
		default:
			drops["other inner packet"]++
		}
	}
	checkKernelFrame(t, kn, frame, request)

	// Answer: the echo reply, written into a buffer at Headroom and
	// encapsulated in place, as the datapath does.
	reply := make([]byte, Headroom+len(request))
	copy(reply[Headroom:], request)
	echoReply(reply[Headroom:])
	mustNL(t, "Encap reply", Encap(reply, 1, replyDst, testVtepMAC))
	if ref, err := slowEncap(reply[Headroom:], 1, replyDst, testVtepMAC); err != nil || !bytes.Equal(ref, reply) {
		t.Fatalf("Encap disagrees with the reference encoder (%v)", err)
	}
	to := netip.AddrPortFrom(kernelUnderlay.Addr(), PortLinux)
	if _, err := conn.WriteToUDPAddrPort(reply, to); err != nil {
		t.Fatalf("send reply to %v: %v", to, err)
	}
	pingErr = waitPing()
	return frame, from, out.String(), pingErr
}

// checkKernelFrame checks the kernel's VXLAN frame and its Decap result
// (request) against what flannel's wire format says and against the
// reference decoder and encoder.
func checkKernelFrame(t *testing.T, kn kernelNode, frame, request []byte) {
	t.Helper()
	h, err := ParseHeader(frame)
	mustNL(t, "ParseHeader", err)
	if want := (Header{Flags: flagI, VNI: 1, Dst: testVtepMAC, Src: kn.mac, EtherType: EtherTypeIPv4}); h != want {
		t.Errorf("kernel frame header %+v, want %+v", h, want)
	}
	if r := [4]byte{frame[1], frame[2], frame[3], frame[7]}; r != [4]byte{} {
		t.Errorf("kernel set reserved bytes % x", r)
	}
	checkAliases(t, request, frame)
	if ref := slowDecap(frame, 1, testVtepMAC); ref.err != nil || &frame[ref.start] != &request[0] || ref.end-ref.start != len(request) {
		t.Errorf("reference decoder disagrees on the kernel's frame: %+v", ref)
	}
	icmp := checkIPv4(t, request, kernelVtepAddr.Addr(), pingTarget, 1)
	if c := checksum(icmp); c != 0 {
		t.Errorf("kernel's ICMP checksum does not verify")
	}
	// Our encapsulation of the kernel's inner packet reproduces its bytes.
	again := make([]byte, Headroom+len(request))
	copy(again[Headroom:], request)
	mustNL(t, "Encap request", Encap(again, 1, testVtepMAC, kn.mac))
	if !bytes.Equal(again, frame[:len(again)]) {
		t.Errorf("Encap of the kernel's inner packet differs from the kernel's frame:\n got %x\nwant %x", again, frame[:len(again)])
	}
}

// TestKernelInterop pings through a kernel vxlan device: the kernel's echo
// request must Decap correctly, and the echo reply this package Encaps must
// be accepted by the kernel and delivered to ping. A reply with another
// inner destination MAC must be dropped by the kernel, which is why Encap
// must use the peer's VtepMAC.
func TestKernelInterop(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: no ip binary (make deps installs iproute2)")
	}
	kn, conn := setupKernelNode(t)

	_, from, out, err := exchange(t, kn, conn, 30*time.Second, kn.mac)
	if err != nil || !strings.Contains(out, "1 received") {
		t.Fatalf("ping through the kernel vxlan device failed (%v):\n%s", err, out)
	}
	if from.Addr() != kernelUnderlay.Addr() {
		t.Errorf("outer source %v, want %v", from.Addr(), kernelUnderlay.Addr())
	}
	// Linux picks the outer source port from its local port range, whose
	// per-namespace default is our SourcePortMin..SourcePortMax.
	if p := from.Port(); p < SourcePortMin || p > SourcePortMax {
		t.Errorf("kernel's outer source port %d outside [%d, %d]", p, SourcePortMin, SourcePortMax)
	}
	t.Logf("kernel VTEP %v, outer source port %d; ping:\n%s", kn.mac, from.Port(), strings.TrimSpace(out))

	// The same reply addressed to a MAC that is not the kernel VTEP's: the
	// kernel must not deliver it, so ping times out. (A delay can only make
	// this pass wrongly, never fail wrongly.)
	wrong := kn.mac
	wrong[5] ^= 0x01
	_, _, out, err = exchange(t, kn, conn, 2*time.Second, wrong)
	if err == nil || !strings.Contains(out, "0 received") {
		t.Fatalf("the kernel delivered a reply whose inner destination MAC %v is not its own %v (ping: %v):\n%s", wrong, kn.mac, err, out)
	}
}

// echoReply turns an IPv4 ICMP echo request into its reply in place: swap
// the addresses, type 0, fresh TTL, both checksums recomputed.
func echoReply(ip []byte) {
	ihl := int(ip[0]&0x0f) * 4
	var src [4]byte
	copy(src[:], ip[12:16])
	copy(ip[12:16], ip[16:20])
	copy(ip[16:20], src[:])
	ip[8] = 64
	binary.BigEndian.PutUint16(ip[10:12], 0)
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip[:ihl]))
	icmp := ip[ihl:]
	icmp[0], icmp[1] = 0, 0
	binary.BigEndian.PutUint16(icmp[2:4], 0)
	binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp))
}
