package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"overlay/encap"
	"overlay/routes"
)

// Fakes for the scatter-gather paths, which only the Linux offload TUN
// takes (package tunneltest's fakes cannot be imported here). They allocate
// nothing per packet.

// sgDevice reads packets with virtio-net headers from a queue and records
// what the in pump writes.
type sgDevice struct {
	in      chan []byte // virtio-net header and packet, as the kernel hands them
	closed  chan struct{}
	once    sync.Once
	written atomic.Uint64 // packets, counting each coalesced segment
	writes  atomic.Uint64 // writeVnet calls

	mu   sync.Mutex
	keep bool     // record the written packets
	got  [][]byte // virtio-net header and packet, per write
}

func newSGDevice() *sgDevice {
	return &sgDevice{in: make(chan []byte, 16), closed: make(chan struct{})}
}

func (d *sgDevice) readVnet(buf []byte, wait bool) (int, error) {
	var p []byte
	if wait {
		select {
		case p = <-d.in:
		case <-d.closed:
			return 0, os.ErrClosed
		}
	} else {
		select {
		case p = <-d.in:
		default:
			return 0, nil
		}
	}
	return copy(buf, p), nil
}

func (d *sgDevice) writeVnet(pieces [][]byte) error {
	select {
	case <-d.closed:
		return os.ErrClosed
	default:
	}
	h := parseVnetHdr(pieces[0])
	n := 1
	if h.gsoType != vnetGSONone {
		total := -int(h.hdrLen) - vnetHdrLen
		for _, p := range pieces {
			total += len(p)
		}
		n = (total + int(h.gsoSize) - 1) / int(h.gsoSize)
	}
	if d.keep {
		var b []byte
		for _, p := range pieces {
			b = append(b, p...)
		}
		d.mu.Lock()
		d.got = append(d.got, b)
		d.mu.Unlock()
	}
	d.writes.Add(1)
	d.written.Add(uint64(n))
	return nil
}

func (d *sgDevice) udpGSO() bool { return true }

func (d *sgDevice) newVnetWriter() func(pieces [][]byte) error { return d.writeVnet }

func (d *sgDevice) Read([][]byte, []int, int) (int, error) {
	return 0, errors.New("sgDevice: Read is not for scatter-gather pumps")
}
func (d *sgDevice) Write([][]byte, int) (int, error) {
	return 0, errors.New("sgDevice: Write is not for scatter-gather pumps")
}
func (d *sgDevice) BatchSize() int { return 64 }
func (d *sgDevice) MTU() int       { return 1450 }
func (d *sgDevice) Name() string   { return "sg0" }
func (d *sgDevice) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

// sgConn receives GRO slots from a queue and counts the datagrams sent.
type sgConn struct {
	in     chan fakeSlot
	closed chan struct{}
	once   sync.Once
	sent   atomic.Uint64
	sends  atomic.Uint64

	keep bool
	mu   sync.Mutex
	got  [][]byte // datagrams
}

type fakeSlot struct {
	data []byte
	seg  int
}

func newSGConn() *sgConn {
	return &sgConn{in: make(chan fakeSlot, 16), closed: make(chan struct{})}
}

func (c *sgConn) ReadBatch(msgs []ReadMessage) (int, error) {
	select {
	case s := <-c.in:
		msgs[0].N = copy(msgs[0].Buf, s.data)
		msgs[0].Segment = s.seg
		msgs[0].Truncated = false
		msgs[0].Addr = sgAddrB // every slot comes from peer B
		return 1, nil
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

func (c *sgConn) WriteBatch(msgs []WriteMessage) error {
	for i := range msgs {
		m := &msgs[i]
		total := 0
		for _, f := range m.Frames {
			total += len(f)
		}
		m.Sent = len(m.Frames)
		if m.Segment > 0 {
			m.Sent = (total + m.Segment - 1) / m.Segment
		}
		if c.keep {
			var all []byte
			for _, f := range m.Frames {
				all = append(all, f...)
			}
			seg := m.Segment
			if seg == 0 {
				seg = len(all)
			}
			c.mu.Lock()
			for len(all) > 0 {
				n := min(seg, len(all))
				c.got = append(c.got, all[:n:n])
				all = all[n:]
			}
			c.mu.Unlock()
		}
		c.sends.Add(1)
		c.sent.Add(uint64(m.Sent))
	}
	return nil
}

func (c *sgConn) BatchSize() int            { return 128 }
func (c *sgConn) GSO() bool                 { return true }
func (c *sgConn) GRO() bool                 { return true }
func (c *sgConn) LocalAddr() netip.AddrPort { return netip.MustParseAddrPort("172.30.250.1:8472") }
func (c *sgConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

var (
	sgMacA  = encap.MAC{2, 0, 0, 0, 0, 0xa}
	sgMacB  = encap.MAC{2, 0, 0, 0, 0, 0xb}
	sgAddrB = netip.MustParseAddrPort("172.30.250.2:8472")
)

// startSG runs a tunnel (node A, peer B at 10.244.2.0/24) over the fakes.
func startSG(t *testing.T, dev *sgDevice, conn *sgConn) *Tunnel {
	t.Helper()
	var table routes.Table
	err := table.Update([]netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, []routes.Peer{{
		Subnet:   netip.MustParsePrefix("10.244.2.0/24"),
		Endpoint: sgAddrB,
		MAC:      sgMacB,
	}})
	if err != nil {
		t.Fatal(err)
	}
	tun, err := New(Options{Device: dev, Conn: conn, Table: &table, VNI: 1, LocalMAC: sgMacA, MTU: 1450,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- tun.Run(context.Background()) }()
	t.Cleanup(func() {
		tun.Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return tun
}

// sgTraffic builds what one step pushes each way: a TCP super-packet from
// the TUN (virtio-net header first) and, from the underlay, a GRO slot of
// the same segments in VXLAN frames.
func sgTraffic(segs int) (out []byte, slot fakeSlot, want [][]byte) {
	payload := make([]byte, 1398*segs)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	sp := superPacket(false, false, false, tcpACK|tcpPSH, payload)
	copy(sp[12:20], []byte{10, 244, 1, 7, 10, 244, 2, 9})
	sp[10], sp[11] = 0, 0
	sp[10], sp[11] = byte(^slowChecksum(sp[:20])>>8), byte(^slowChecksum(sp[:20]))
	h := vnetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, hdrLen: 52, gsoSize: 1398, csumStart: 20, csumOffset: 16}
	out = make([]byte, vnetHdrLen+len(sp))
	h.put(out)
	copy(out[vnetHdrLen:], sp)
	want = refSegments(sp, 20, 52, false, 1398)

	// Received: the segments of a flow from B to A.
	rsp := append([]byte(nil), sp...)
	copy(rsp[12:20], []byte{10, 244, 2, 9, 10, 244, 1, 7})
	rsp[10], rsp[11] = 0, 0
	rsp[10], rsp[11] = byte(^slowChecksum(rsp[:20])>>8), byte(^slowChecksum(rsp[:20]))
	rsegs := refSegments(rsp, 20, 52, false, 1398)
	seg := encap.Headroom + 1450
	for _, s := range rsegs {
		f := make([]byte, encap.Headroom+len(s))
		copy(f[encap.Headroom:], s)
		if err := encap.Encap(f, 1, sgMacA, sgMacB); err != nil {
			panic(err)
		}
		slot.data = append(slot.data, f...)
	}
	slot.seg = seg
	return out, slot, want
}

// TestScatterGatherPumps runs both pumps in scatter-gather mode: a TCP
// super-packet from the TUN leaves as VXLAN frames byte for byte like a
// reference segmentation, and received segments reach the TUN as one
// coalesced super-packet that re-splits into them.
func TestScatterGatherPumps(t *testing.T) {
	dev, conn := newSGDevice(), newSGConn()
	dev.keep, conn.keep = true, true
	startSG(t, dev, conn)
	out, slot, want := sgTraffic(20)
	dev.in <- out
	conn.in <- slot
	for deadline := time.Now().Add(10 * time.Second); conn.sent.Load() < 20 || dev.written.Load() < 20; {
		if time.Now().After(deadline) {
			t.Fatalf("sent %d, written %d; want 20 each", conn.sent.Load(), dev.written.Load())
		}
		time.Sleep(time.Millisecond)
	}
	conn.mu.Lock()
	got := conn.got
	conn.mu.Unlock()
	if len(got) != len(want) {
		t.Fatalf("%d datagrams, want %d", len(got), len(want))
	}
	for i := range want {
		f := got[i]
		pkt, err := encap.Decap(f, 1, sgMacB)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if !bytes.Equal(pkt, want[i]) {
			t.Fatalf("datagram %d differs from the reference segment", i)
		}
	}
	if conn.sends.Load() != 1 {
		t.Errorf("%d messages for one super-packet, want 1 (one GSO send)", conn.sends.Load())
	}
	dev.mu.Lock()
	writes := dev.got
	dev.mu.Unlock()
	if len(writes) != 1 {
		t.Fatalf("%d TUN writes for 20 coalescable segments, want 1", len(writes))
	}
	back := resplit(t, writes[0])
	_, rslot, _ := sgTraffic(20)
	for i, s := range back {
		f := rslot.data[i*rslot.seg : min((i+1)*rslot.seg, len(rslot.data))]
		if !bytes.Equal(s, f[encap.Headroom:]) {
			t.Fatalf("received segment %d differs after coalescing and re-splitting", i)
		}
	}
}

// TestScatterGatherPumpsDoNotAllocate counts allocations per step (a
// super-packet each way) in steady state.
func TestScatterGatherPumpsDoNotAllocate(t *testing.T) {
	dev, conn := newSGDevice(), newSGConn()
	startSG(t, dev, conn)
	out, slot, _ := sgTraffic(20)
	var n uint64
	step := func() {
		dev.in <- out
		conn.in <- slot
		n += 20
		for deadline := time.Now().Add(10 * time.Second); conn.sent.Load() < n || dev.written.Load() < n; {
			if time.Now().After(deadline) {
				t.Fatal("packets did not come through")
			}
			runtime.Gosched()
		}
	}
	for range 50 {
		step()
	}
	if allocs := testing.AllocsPerRun(300, step); allocs != 0 {
		t.Errorf("%v allocations per step, want 0", allocs)
	}
}
