package tunnel_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"overlay/encap"
	"overlay/routes"
	"overlay/tunnel"
	"overlay/tunnel/tunneltest"
)

var (
	macA  = encap.MAC{0x02, 0, 0, 0, 0, 0xa}
	macB  = encap.MAC{0x02, 0, 0, 0, 0, 0xb}
	macC  = encap.MAC{0x02, 0, 0, 0, 0, 0xc}
	addrA = netip.MustParseAddrPort("172.30.250.1:8472")
	addrB = netip.MustParseAddrPort("172.30.250.2:8472")
	addrC = netip.MustParseAddrPort("172.30.250.3:8472")
)

const vni = encap.VNI(1)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// tableA is node A's view: its own subnets, and peers B and C (C's
// endpoint has no port: the tunnel's default applies).
func tableA(t testing.TB) *routes.Table {
	t.Helper()
	var tb routes.Table
	err := tb.Update(
		[]netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fc00:0:0:1::/64")},
		[]routes.Peer{
			{Subnet: netip.MustParsePrefix("10.244.2.0/24"), IPv6Subnet: netip.MustParsePrefix("fc00:0:0:2::/64"), Endpoint: addrB, MAC: macB},
			{Subnet: netip.MustParsePrefix("10.244.3.0/24"), Endpoint: netip.AddrPortFrom(addrC.Addr(), 0), MAC: macC},
		})
	if err != nil {
		t.Fatal(err)
	}
	return &tb
}

// tableB is node B's view.
func tableB(t testing.TB) *routes.Table {
	t.Helper()
	var tb routes.Table
	err := tb.Update(
		[]netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fc00:0:0:2::/64")},
		[]routes.Peer{{Subnet: netip.MustParsePrefix("10.244.1.0/24"), IPv6Subnet: netip.MustParsePrefix("fc00:0:0:1::/64"), Endpoint: addrA, MAC: macA}})
	if err != nil {
		t.Fatal(err)
	}
	return &tb
}

type node struct {
	tun   *tunnel.Tunnel
	dev   *tunneltest.Device
	conn  *tunneltest.Conn
	table *routes.Table
	errc  chan error
}

// start runs a tunnel over fakes and stops it when the test ends, checking
// that Run returned.
func start(t testing.TB, dev *tunneltest.Device, conn *tunneltest.Conn, table *routes.Table, mac encap.MAC, mtu int) *node {
	t.Helper()
	return startWith(t, tunnel.Options{Device: dev, Conn: conn, Table: table, VNI: vni, LocalMAC: mac, MTU: mtu})
}

// startWith is start with all of the tunnel's options; a nil Logger means
// a quiet one.
func startWith(t testing.TB, opts tunnel.Options) *node {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	tun, err := tunnel.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	dev, _ := opts.Device.(*tunneltest.Device)
	conn, _ := opts.Conn.(*tunneltest.Conn)
	n := &node{tun: tun, dev: dev, conn: conn, table: opts.Table, errc: make(chan error, 1)}
	go func() { n.errc <- tun.Run(context.Background()) }()
	t.Cleanup(func() {
		if err := tun.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-n.errc:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after Close")
		}
	})
	return n
}

func recvDatagram(t testing.TB, c *tunneltest.Conn) tunneltest.Datagram {
	t.Helper()
	select {
	case d := <-c.Sent():
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for a datagram")
	}
	panic("unreachable")
}

func recvPacket(t testing.TB, d *tunneltest.Device) []byte {
	t.Helper()
	select {
	case p := <-d.Written():
		return p
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for a packet written to the TUN")
	}
	panic("unreachable")
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestOutRoutesAndDrops(t *testing.T) {
	dev := tunneltest.NewDevice(tunneltest.DeviceOptions{})
	conn := tunneltest.NewNetwork().Listen(addrA, tunneltest.ConnOptions{})
	n := start(t, dev, conn, tableA(t), macA, 1450)

	toB := udp4("10.244.1.5", "10.244.2.7", 1000, 2000, 100, false)
	toC := udp4("10.244.1.5", "10.244.3.9", 1000, 2000, 200, false)
	toB6 := udp6("fc00:0:0:1::5", "fc00:0:0:2::7", 1000, 2000, 300)
	for _, p := range [][]byte{
		udp4("10.244.1.5", "10.244.9.9", 1, 2, 60, false), // no lease
		udp4("10.244.1.5", "10.244.1.9", 1, 2, 60, false), // our own subnet
		udp6("fc00:0:0:1::5", "fc00:0:0:1::9", 1, 2, 60),  // our own subnet
		{0x12, 0x34, 0x56}, // not IP
		udp4("10.244.1.5", "10.244.2.7", 1, 2, 60, false)[:19], // short IPv4 header
		toB, toC, toB6,
	} {
		if err := dev.Inject(p); err != nil {
			t.Fatal(err)
		}
	}
	want := []struct {
		pkt []byte
		dst netip.AddrPort
		mac encap.MAC
	}{{toB, addrB, macB}, {toC, addrC, macC}, {toB6, addrB, macB}}
	for _, w := range want {
		d := recvDatagram(t, conn)
		if d.Dst != w.dst {
			t.Errorf("datagram to %v, want %v", d.Dst, w.dst)
		}
		h, err := encap.ParseHeader(d.Data)
		if err != nil {
			t.Fatal(err)
		}
		if h.VNI != vni || h.Dst != w.mac || h.Src != macA {
			t.Errorf("header %+v, want VNI %d dst %v src %v", h, vni, w.mac, macA)
		}
		inner, err := encap.Decap(d.Data, vni, w.mac)
		if err != nil || !bytes.Equal(inner, w.pkt) {
			t.Errorf("inner packet = %x (%v), want %x", inner, err, w.pkt)
		}
		if d.Flow != encap.FlowHash(w.pkt) {
			t.Errorf("flow %#x, want the inner flow hash %#x", d.Flow, encap.FlowHash(w.pkt))
		}
	}
	eventually(t, "drop counters", func() bool {
		s := n.tun.Stats()
		return s.Out.Drops[tunnel.DropNoRoute] == 1 && s.Out.Drops[tunnel.DropLoop] == 2 && s.Out.Drops[tunnel.DropMalformed] == 2
	})
	s := n.tun.Stats()
	if s.Out.Packets != 3 || s.Out.Bytes != uint64(len(toB)+len(toC)+len(toB6)) {
		t.Errorf("out totals = %d packets %d bytes", s.Out.Packets, s.Out.Bytes)
	}
	if s.Out.Drops[tunnel.DropTooBig] != 0 || s.Out.Drops[tunnel.DropSend] != 0 {
		t.Errorf("unexpected drops: %v", s.Out.Drops)
	}
	ps := n.table.Stats()
	if ps[0].TxPackets != 2 || ps[0].TxBytes != uint64(len(toB)+len(toB6)) || ps[0].LastTx.IsZero() {
		t.Errorf("peer B counters: %+v", ps[0])
	}
	if ps[1].TxPackets != 1 || ps[1].TxBytes != uint64(len(toC)) {
		t.Errorf("peer C counters: %+v", ps[1])
	}
}

func TestOutGroupsByPeerAndFlow(t *testing.T) {
	dev := tunneltest.NewDevice(tunneltest.DeviceOptions{BatchSize: 64})
	conn := tunneltest.NewNetwork().Listen(addrA, tunneltest.ConnOptions{GSO: true})
	// Queue the whole batch before the pump starts, so one Read gets it.
	flow1 := udp4("10.244.1.5", "10.244.2.7", 1000, 2000, 1400, true)
	flow2 := udp4("10.244.1.5", "10.244.2.7", 1001, 2000, 1400, true)
	toC := udp4("10.244.1.5", "10.244.3.9", 1000, 2000, 1400, true)
	for i := range 30 {
		if err := dev.Inject([][]byte{flow1, flow2, toC}[i%3]); err != nil {
			t.Fatal(err)
		}
	}
	start(t, dev, conn, tableA(t), macA, 1450)
	eventually(t, "30 frames", func() bool { return conn.Frames() == 30 })
	if got := conn.Sends(); got != 3 {
		t.Errorf("%d sends for one batch of 3 (peer, flow) groups, want 3", got)
	}
	// Groups go out in order of their first packet, each as one run.
	flows := map[uint32]int{}
	for i := range 30 {
		d := recvDatagram(t, conn)
		flows[d.Flow]++
		want := [][]byte{flow1, flow2, toC}[i/10]
		if inner := d.Data[encap.Headroom:]; !bytes.Equal(inner, want) {
			t.Fatalf("datagram %d carries %x..., want %x...", i, inner[:28], want[:28])
		}
	}
	if len(flows) != 3 {
		t.Errorf("flows seen: %v, want 3 distinct", flows)
	}
}

// frame encapsulates pkt as a peer would send it to node A.
func frame(pkt []byte, v encap.VNI, dst, src encap.MAC) []byte {
	f := make([]byte, encap.Headroom+len(pkt))
	copy(f[encap.Headroom:], pkt)
	if err := encap.Encap(f, v, dst, src); err != nil {
		panic(err)
	}
	return f
}

func TestInDecapsulatesAndDrops(t *testing.T) {
	for _, batch := range []int{1, 64} {
		t.Run(map[int]string{1: "plain", 64: "offload"}[batch], func(t *testing.T) {
			dev := tunneltest.NewDevice(tunneltest.DeviceOptions{BatchSize: batch})
			conn := tunneltest.NewNetwork().Listen(addrA, tunneltest.ConnOptions{GRO: true})
			n := start(t, dev, conn, tableA(t), macA, 1450)

			fromB := udp4("10.244.2.7", "10.244.1.5", 2000, 1000, 120, false)
			fromB6 := udp6("fc00:0:0:2::7", "fc00:0:0:1::5", 2000, 1000, 140)
			good := frame(fromB, vni, macA, macB)
			arp := frame(fromB, vni, macA, macB)
			binary.BigEndian.PutUint16(arp[encap.Headroom-2:], encap.EtherTypeARP)
			noI := frame(fromB, vni, macA, macB)
			noI[0] = 0
			// A GRO super-datagram: three frames of one size back to back.
			seg := frame(udp4("10.244.2.7", "10.244.1.5", 2000, 1000, 100, false), vni, macA, macB)
			gro := bytes.Join([][]byte{seg, seg, seg}, nil)
			for _, d := range []tunneltest.Datagram{
				{Data: frame(fromB, 2, macA, macB)},   // wrong VNI
				{Data: frame(fromB, vni, macC, macB)}, // not our MAC
				{Data: arp},                           // ARP
				{Data: noI},                           // no I flag
				{Data: good[:10]},                     // short
				{Data: good[:encap.Headroom+30]},      // inner packet truncated
				{Data: make([]byte, 70000)},           // larger than any buffer
				{Data: good, Src: netip.AddrPortFrom(addrB.Addr(), 40000)}, // any source port is fine
				{Data: frame(fromB6, vni, macA, macB)},
				{Data: gro, Segment: len(seg)},
			} {
				if d.Src == (netip.AddrPort{}) {
					d.Src = addrB
				}
				if err := conn.Inject(d); err != nil {
					t.Fatal(err)
				}
			}
			for i, want := range [][]byte{fromB, fromB6, seg[encap.Headroom:], seg[encap.Headroom:], seg[encap.Headroom:]} {
				if got := recvPacket(t, dev); !bytes.Equal(got, want) {
					t.Errorf("packet %d written to TUN = %x, want %x", i, got, want)
				}
			}
			eventually(t, "drop counters", func() bool {
				d := n.tun.Stats().In.Drops
				return d[tunnel.DropWrongVNI] == 1 && d[tunnel.DropNotOurMAC] == 1 && d[tunnel.DropARP] == 1 &&
					d[tunnel.DropNoIFlag] == 1 && d[tunnel.DropShort] == 1 && d[tunnel.DropTruncatedIP] == 1 &&
					d[tunnel.DropTruncated] == 1
			})
			s := n.tun.Stats()
			if s.In.Packets != 5 || s.In.Unattributed != 0 {
				t.Errorf("in: %d packets, %d unattributed; want 5, 0", s.In.Packets, s.In.Unattributed)
			}
			ps := n.table.Stats()
			wantB := uint64(len(fromB) + len(fromB6) + 3*(len(seg)-encap.Headroom))
			if ps[0].RxPackets != 5 || ps[0].RxBytes != wantB || ps[0].LastRx.IsZero() {
				t.Errorf("peer B rx = %d packets %d bytes (last %v), want 5, %d", ps[0].RxPackets, ps[0].RxBytes, ps[0].LastRx, wantB)
			}
		})
	}
}

func TestICMPTooBig(t *testing.T) {
	dev := tunneltest.NewDevice(tunneltest.DeviceOptions{MTU: 1500})
	conn := tunneltest.NewNetwork().Listen(addrA, tunneltest.ConnOptions{})
	n := start(t, dev, conn, tableA(t), macA, 1400)

	big := udp4("10.244.1.5", "10.244.2.7", 1000, 2000, 1420, true)
	if err := dev.Inject(big); err != nil {
		t.Fatal(err)
	}
	reply := recvPacket(t, dev)
	if len(reply) != 576 {
		t.Errorf("ICMP reply is %d bytes, want 576 (quoting as much as fits)", len(reply))
	}
	if reply[0] != 0x45 || reply[9] != 1 || csum(reply[:20], 0) != 0 {
		t.Fatalf("reply is not a valid IPv4 ICMP packet: %x", reply[:20])
	}
	if src, dst := netip.AddrFrom4([4]byte(reply[12:16])), netip.AddrFrom4([4]byte(reply[16:20])); src != netip.MustParseAddr("10.244.1.0") || dst != netip.MustParseAddr("10.244.1.5") {
		t.Errorf("ICMP from %v to %v, want from 10.244.1.0 (the TUN address) to 10.244.1.5", src, dst)
	}
	ic := reply[20:]
	if ic[0] != 3 || ic[1] != 4 || binary.BigEndian.Uint16(ic[6:]) != 1400 || csum(ic, 0) != 0 {
		t.Errorf("ICMP type %d code %d mtu %d checksum ok %v; want 3/4/1400/true", ic[0], ic[1], binary.BigEndian.Uint16(ic[6:]), csum(ic, 0) == 0)
	}
	if !bytes.Equal(ic[8:8+28], big[:28]) {
		t.Error("ICMP does not quote the offending packet's header")
	}

	// Without DF the packet is dropped silently; an ICMP error is never
	// answered with one.
	if err := dev.Inject(udp4("10.244.1.5", "10.244.2.7", 1000, 2000, 1420, false)); err != nil {
		t.Fatal(err)
	}
	icmpErr := ipv4("10.244.1.5", "10.244.2.7", 1, true, append([]byte{3, 1, 0, 0}, make([]byte, 1400)...))
	if err := dev.Inject(icmpErr); err != nil {
		t.Fatal(err)
	}

	big6 := udp6("fc00:0:0:1::5", "fc00:0:0:2::7", 1000, 2000, 1500)
	if err := dev.Inject(big6); err != nil {
		t.Fatal(err)
	}
	reply6 := recvPacket(t, dev)
	if reply6[0]>>4 != 6 || reply6[6] != 58 || len(reply6) != 1280 {
		t.Fatalf("reply is not a 1280-byte ICMPv6 packet: len %d %x", len(reply6), reply6[:8])
	}
	if src := netip.AddrFrom16([16]byte(reply6[8:24])); src != netip.MustParseAddr("fc00:0:0:1::") {
		t.Errorf("ICMPv6 from %v, want fc00:0:0:1::", src)
	}
	ic6 := reply6[40:]
	var ph uint32
	for i := 8; i < 40; i += 2 {
		ph += uint32(binary.BigEndian.Uint16(reply6[i:]))
	}
	ph += 58 + uint32(len(ic6))
	if ic6[0] != 2 || ic6[1] != 0 || binary.BigEndian.Uint32(ic6[4:]) != 1400 || csum(ic6, ph) != 0 {
		t.Errorf("ICMPv6 type %d code %d mtu %d checksum ok %v; want 2/0/1400/true", ic6[0], ic6[1], binary.BigEndian.Uint32(ic6[4:]), csum(ic6, ph) == 0)
	}
	eventually(t, "too_big drops", func() bool { return n.tun.Stats().Out.Drops[tunnel.DropTooBig] == 4 })
	select {
	case p := <-dev.Written():
		t.Errorf("unexpected packet written to the TUN: %x", p[:min(len(p), 40)])
	default:
	}
	if conn.Frames() != 0 {
		t.Errorf("%d oversized frames sent", conn.Frames())
	}
}

// TestTwoTunnels joins two tunnels over a fake network, one plain and one
// "offloading", and checks packets cross both ways unchanged.
func TestTwoTunnels(t *testing.T) {
	nw := tunneltest.NewNetwork()
	devA := tunneltest.NewDevice(tunneltest.DeviceOptions{Name: "a"})
	devB := tunneltest.NewDevice(tunneltest.DeviceOptions{Name: "b", BatchSize: 32})
	a := start(t, devA, nw.Listen(addrA, tunneltest.ConnOptions{}), tableA(t), macA, 1450)
	b := start(t, devB, nw.Listen(addrB, tunneltest.ConnOptions{GSO: true, GRO: true}), tableB(t), macB, 1450)
	var sent [][]byte
	for i := range 50 {
		p := udp4("10.244.1.5", "10.244.2.7", uint16(1000+i%4), 2000, 100+i*20, false)
		sent = append(sent, p)
		if err := devA.Inject(p); err != nil {
			t.Fatal(err)
		}
	}
	// Per flow, order is kept.
	byFlow := map[uint16][][]byte{}
	for _, p := range sent {
		sp := binary.BigEndian.Uint16(p[20:])
		byFlow[sp] = append(byFlow[sp], p)
	}
	for range sent {
		got := recvPacket(t, devB)
		sp := binary.BigEndian.Uint16(got[20:])
		if len(byFlow[sp]) == 0 || !bytes.Equal(got, byFlow[sp][0]) {
			t.Fatalf("B received an unexpected packet %x", got[:28])
		}
		byFlow[sp] = byFlow[sp][1:]
	}
	back := udp6("fc00:0:0:2::7", "fc00:0:0:1::5", 2000, 1000, 700)
	if err := devB.Inject(back); err != nil {
		t.Fatal(err)
	}
	if got := recvPacket(t, devA); !bytes.Equal(got, back) {
		t.Errorf("A received %x, want %x", got, back)
	}
	eventually(t, "counters", func() bool {
		return a.tun.Stats().Out.Packets == 50 && b.tun.Stats().In.Packets == 50 && b.table.Stats()[0].RxPackets == 50
	})
}

func TestLifecycle(t *testing.T) {
	before := runtime.NumGoroutine()
	nw := tunneltest.NewNetwork()
	var dev *tunneltest.Device
	var conn *tunneltest.Conn
	newTunnel := func() *tunnel.Tunnel {
		dev = tunneltest.NewDevice(tunneltest.DeviceOptions{})
		conn = nw.Listen(addrA, tunneltest.ConnOptions{})
		tun, err := tunnel.New(tunnel.Options{Device: dev, Conn: conn, Table: tableA(t), VNI: vni, LocalMAC: macA, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		return tun
	}
	// running proves the out pump is moving packets.
	running := func() {
		t.Helper()
		if err := dev.Inject(udp4("10.244.1.5", "10.244.2.7", 1, 2, 60, false)); err != nil {
			t.Fatal(err)
		}
		recvDatagram(t, conn)
	}

	// Cancelling the context stops Run, which returns only after its
	// goroutines have.
	tun := newTunnel()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- tun.Run(ctx) }()
	running()
	if err := tun.Run(ctx); !errors.Is(err, tunnel.ErrRunning) {
		t.Errorf("second Run = %v, want ErrRunning", err)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	for range 2 {
		if err := tun.Close(); err != nil {
			t.Errorf("Close after Run: %v", err)
		}
	}

	// Close stops a running tunnel and waits for Run.
	tun = newTunnel()
	go func() { errc <- tun.Run(context.Background()) }()
	running()
	if err := tun.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	default:
		t.Error("Close returned before Run did")
	}

	// Close before Run: Run refuses.
	tun = newTunnel()
	if err := tun.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tun.Run(context.Background()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Run after Close = %v, want net.ErrClosed", err)
	}

	eventually(t, "no goroutines left behind", func() bool { return runtime.NumGoroutine() <= before })
}

func TestNewRejectsBadOptions(t *testing.T) {
	nw := tunneltest.NewNetwork()
	dev := tunneltest.NewDevice(tunneltest.DeviceOptions{BatchSize: 8})
	conn := nw.Listen(addrA, tunneltest.ConnOptions{})
	table := tableA(t)
	for name, o := range map[string]tunnel.Options{
		"no device":          {Conn: conn, Table: table},
		"no conn":            {Device: dev, Table: table},
		"no table":           {Device: dev, Conn: conn},
		"VNI out of range":   {Device: dev, Conn: conn, Table: table, VNI: 1 << 24},
		"MTU too small":      {Device: dev, Conn: conn, Table: table, MTU: 20},
		"naive over offload": {Device: dev, Conn: conn, Table: table, Naive: true},
	} {
		o.Logger = quietLogger()
		if _, err := tunnel.New(o); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	tun, err := tunnel.New(tunnel.Options{Device: tunneltest.NewDevice(tunneltest.DeviceOptions{}), Conn: conn, Table: table, Naive: true, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("naive over a plain device: %v", err)
	}
	if s := tun.Stats(); !s.Naive || s.BatchSize != 1 || s.Mode != tunnel.ModePlain {
		t.Errorf("naive stats = %+v", s)
	}
}

// TestPumpsDoNotAllocate pushes packets through both pumps, with fakes that
// allocate nothing, and counts allocations per packet in steady state.
func TestPumpsDoNotAllocate(t *testing.T) {
	for _, batch := range []int{1, 64} {
		t.Run(map[int]string{1: "plain", 64: "offload"}[batch], func(t *testing.T) {
			dev := tunneltest.NewDevice(tunneltest.DeviceOptions{BatchSize: batch, Discard: true})
			conn := tunneltest.NewNetwork().Listen(addrA, tunneltest.ConnOptions{GSO: batch > 1, GRO: batch > 1, Discard: true})
			start(t, dev, conn, tableA(t), macA, 1450)
			out := udp4("10.244.1.5", "10.244.2.7", 1000, 2000, 1400, true)
			in := frame(udp4("10.244.2.7", "10.244.1.5", 2000, 1000, 1400, true), vni, macA, macB)
			var sent, written uint64
			step := func() {
				if err := dev.Inject(out); err != nil {
					t.Fatal(err)
				}
				if err := conn.Inject(tunneltest.Datagram{Data: in, Src: addrB}); err != nil {
					t.Fatal(err)
				}
				sent++
				written++
				for deadline := time.Now().Add(10 * time.Second); conn.Frames() < sent || dev.WrittenPackets() < written; {
					if time.Now().After(deadline) {
						t.Fatal("packets did not come through")
					}
					runtime.Gosched()
				}
			}
			for range 100 { // warm up: first-use allocations are fine
				step()
			}
			if allocs := testing.AllocsPerRun(500, step); allocs != 0 {
				t.Errorf("%v allocations per packet each way, want 0", allocs)
			}
		})
	}
}
