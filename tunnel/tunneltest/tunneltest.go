// Package tunneltest provides channel-backed fakes of tunnel.Device and
// tunnel.Conn, for testing the datapath's logic (routing, drops, ICMP,
// counters, shutdown) without root, and for benchmarking the pumps without
// system calls.
//
// A Device stands for the kernel side of a TUN: Inject queues a packet the
// tunnel will read, Written yields the packets the tunnel wrote. A Network
// joins fake Conns by address: a datagram sent to a Conn of the Network is
// delivered to it, any other lands in the sender's Sent channel. In Discard
// mode both fakes only count what is written, allocating nothing, for
// allocation tests and benchmarks.
package tunneltest

import (
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"overlay/tunnel"
)

// DeviceOptions configure a fake Device.
type DeviceOptions struct {
	Name string // default "fake0"
	MTU  int    // default 1450
	// BatchSize > 1 makes the device an "offloading" one: Read returns up
	// to that many packets, and Write scribbles over each buffer's
	// headroom, as the real coalescing Write may, to catch callers that
	// rely on it. Default 1.
	BatchSize int
	// Queue is the capacity of the injection and written channels;
	// default 1024.
	Queue int
	// Discard makes Write count packets without keeping them.
	Discard bool
}

// Device is a fake TUN. Its methods are safe for concurrent use.
type Device struct {
	opts    DeviceOptions
	in      chan []byte
	out     chan []byte
	closed  chan struct{}
	once    sync.Once
	packets atomic.Uint64
	bytes   atomic.Uint64
}

var _ tunnel.Device = (*Device)(nil)

// NewDevice returns a fake TUN.
func NewDevice(opts DeviceOptions) *Device {
	if opts.Name == "" {
		opts.Name = "fake0"
	}
	if opts.MTU == 0 {
		opts.MTU = 1450
	}
	if opts.BatchSize == 0 {
		opts.BatchSize = 1
	}
	if opts.Queue == 0 {
		opts.Queue = 1024
	}
	return &Device{
		opts:   opts,
		in:     make(chan []byte, opts.Queue),
		out:    make(chan []byte, opts.Queue),
		closed: make(chan struct{}),
	}
}

// Inject queues pkt for the tunnel to read, as if the kernel routed it into
// the TUN. pkt must not be modified until it has been read. It blocks while
// the queue is full, and returns net.ErrClosed once the device is closed.
func (d *Device) Inject(pkt []byte) error {
	select {
	case <-d.closed:
		return net.ErrClosed
	default:
	}
	select {
	case d.in <- pkt:
		return nil
	case <-d.closed:
		return net.ErrClosed
	}
}

// Written yields copies of the packets the tunnel wrote (unless Discard).
func (d *Device) Written() <-chan []byte { return d.out }

// WrittenPackets and WrittenBytes count what the tunnel wrote.
func (d *Device) WrittenPackets() uint64 { return d.packets.Load() }

// WrittenBytes counts the bytes of the packets the tunnel wrote.
func (d *Device) WrittenBytes() uint64 { return d.bytes.Load() }

// Read implements tunnel.Device.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	var pkt []byte
	select {
	case pkt = <-d.in:
	case <-d.closed:
		return 0, os.ErrClosed
	}
	n := 0
	max := min(len(bufs), d.opts.BatchSize)
	for {
		if len(pkt) > len(bufs[n])-offset {
			return n, io.ErrShortBuffer
		}
		sizes[n] = copy(bufs[n][offset:], pkt)
		n++
		if n == max {
			return n, nil
		}
		select {
		case pkt = <-d.in:
		default:
			return n, nil
		}
	}
}

// Write implements tunnel.Device.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-d.closed:
		return 0, os.ErrClosed
	default:
	}
	for i, b := range bufs {
		pkt := b[offset:]
		d.packets.Add(1)
		d.bytes.Add(uint64(len(pkt)))
		if !d.opts.Discard {
			select {
			case d.out <- append([]byte(nil), pkt...):
			case <-d.closed:
				return i, os.ErrClosed
			}
		}
		if d.opts.BatchSize > 1 && offset >= tunnel.WriteHeadroom {
			for j := range b[:offset] {
				b[j] = 0xee
			}
		}
	}
	return len(bufs), nil
}

// BatchSize implements tunnel.Device.
func (d *Device) BatchSize() int { return d.opts.BatchSize }

// MTU implements tunnel.Device.
func (d *Device) MTU() int { return d.opts.MTU }

// Name implements tunnel.Device.
func (d *Device) Name() string { return d.opts.Name }

// Close implements tunnel.Device; it is idempotent.
func (d *Device) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

// Datagram is one UDP datagram on the fake network.
type Datagram struct {
	Data []byte
	// Src and Dst are the sender's and receiver's addresses.
	Src, Dst netip.AddrPort
	// Flow is the WriteMessage.Flow it was sent with (which the real Conn
	// turns into a source port).
	Flow uint32
	// Segment, when injected, makes the datagram a GRO super-datagram of
	// Segment-sized datagrams.
	Segment int
}

// Network joins fake Conns by address. Its methods are safe for concurrent
// use; the zero value is not usable, call NewNetwork.
type Network struct {
	mu    sync.Mutex // guards conns
	conns map[netip.AddrPort]*Conn
}

// NewNetwork returns an empty network.
func NewNetwork() *Network { return &Network{conns: map[netip.AddrPort]*Conn{}} }

// ConnOptions configure a fake Conn.
type ConnOptions struct {
	// GSO and GRO are what the Conn reports; GSO also makes it count each
	// message as one send instead of one per frame.
	GSO, GRO bool
	// BatchSize is what the Conn reports; default 128.
	BatchSize int
	// Queue is the capacity of the receive and sent channels; default 1024.
	Queue int
	// Discard makes WriteBatch count frames without delivering them.
	Discard bool
}

// Conn is a fake UDP socket. Its methods are safe for concurrent use.
type Conn struct {
	net    *Network
	addr   netip.AddrPort
	opts   ConnOptions
	in     chan Datagram
	sent   chan Datagram
	closed chan struct{}
	once   sync.Once

	sends  atomic.Uint64
	frames atomic.Uint64
}

var _ tunnel.Conn = (*Conn)(nil)

// Listen adds a Conn at addr to the network.
func (n *Network) Listen(addr netip.AddrPort, opts ConnOptions) *Conn {
	if opts.BatchSize == 0 {
		opts.BatchSize = 128
	}
	if opts.Queue == 0 {
		opts.Queue = 1024
	}
	c := &Conn{
		net: n, addr: addr, opts: opts,
		in:     make(chan Datagram, opts.Queue),
		sent:   make(chan Datagram, opts.Queue),
		closed: make(chan struct{}),
	}
	n.mu.Lock()
	n.conns[addr] = c
	n.mu.Unlock()
	return c
}

func (n *Network) lookup(addr netip.AddrPort) *Conn {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.conns[addr]
}

// Inject delivers d to the Conn as if it had arrived from the underlay.
// d.Data must not be modified until it has been read. It blocks while the
// queue is full and returns net.ErrClosed once the Conn is closed.
func (c *Conn) Inject(d Datagram) error {
	select {
	case <-c.closed:
		return net.ErrClosed
	default:
	}
	select {
	case c.in <- d:
		return nil
	case <-c.closed:
		return net.ErrClosed
	}
}

// Sent yields the datagrams sent to addresses not on the network.
func (c *Conn) Sent() <-chan Datagram { return c.sent }

// Sends counts send operations: one per message with GSO, one per frame
// without. Frames counts datagrams sent.
func (c *Conn) Sends() uint64 { return c.sends.Load() }

// Frames counts the datagrams sent.
func (c *Conn) Frames() uint64 { return c.frames.Load() }

// ReadBatch implements tunnel.Conn.
func (c *Conn) ReadBatch(msgs []tunnel.ReadMessage) (int, error) {
	var d Datagram
	select {
	case d = <-c.in:
	case <-c.closed:
		return 0, net.ErrClosed
	}
	n := 0
	for {
		m := &msgs[n]
		m.N = copy(m.Buf, d.Data)
		m.Truncated = len(d.Data) > len(m.Buf)
		m.Segment = m.N
		if d.Segment > 0 && d.Segment < m.N {
			m.Segment = d.Segment
		}
		m.Addr = d.Src
		n++
		if n == len(msgs) {
			return n, nil
		}
		select {
		case d = <-c.in:
		default:
			return n, nil
		}
	}
}

// WriteBatch implements tunnel.Conn: each frame becomes a Datagram,
// delivered to the Conn listening on the message's address, or else to
// Sent.
func (c *Conn) WriteBatch(msgs []tunnel.WriteMessage) error {
	select {
	case <-c.closed:
		return net.ErrClosed
	default:
	}
	for i := range msgs {
		m := &msgs[i]
		m.Sent = 0
		frames := m.Frames
		if m.Segment > 0 {
			// Scatter-gather: cut the concatenated pieces into datagrams.
			var all []byte
			for _, f := range m.Frames {
				all = append(all, f...)
			}
			frames = nil
			for len(all) > 0 {
				n := min(m.Segment, len(all))
				frames = append(frames, all[:n:n])
				all = all[n:]
			}
		}
		if c.opts.GSO {
			c.sends.Add(1)
		} else {
			c.sends.Add(uint64(len(frames)))
		}
		var dst *Conn
		if !c.opts.Discard {
			dst = c.net.lookup(m.Addr)
		}
		for _, f := range frames {
			c.frames.Add(1)
			m.Sent++
			if c.opts.Discard {
				continue
			}
			d := Datagram{Data: append([]byte(nil), f...), Src: c.addr, Dst: m.Addr, Flow: m.Flow}
			if dst != nil {
				if dst.Inject(d) != nil {
					m.Sent-- // the receiver is gone: lost, as on a real network
				}
				continue
			}
			select {
			case c.sent <- d:
			case <-c.closed:
				return net.ErrClosed
			}
		}
	}
	return nil
}

// BatchSize implements tunnel.Conn.
func (c *Conn) BatchSize() int { return c.opts.BatchSize }

// GSO implements tunnel.Conn.
func (c *Conn) GSO() bool { return c.opts.GSO }

// GRO implements tunnel.Conn.
func (c *Conn) GRO() bool { return c.opts.GRO }

// LocalAddr implements tunnel.Conn.
func (c *Conn) LocalAddr() netip.AddrPort { return c.addr }

// Close implements tunnel.Conn; it is idempotent and removes the Conn from
// its network.
func (c *Conn) Close() error {
	c.once.Do(func() {
		close(c.closed)
		c.net.mu.Lock()
		if c.net.conns[c.addr] == c {
			delete(c.net.conns, c.addr)
		}
		c.net.mu.Unlock()
	})
	return nil
}
