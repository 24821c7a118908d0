package floor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"overlay/encap"
	"overlay/tunnel"
)

// slot is the room one TUN read needs: headroom (the virtio-net header
// lies at its end) and the largest packet.
const slot = encap.Headroom + 65535

// maxSegs bounds the segments of one super-packet (64 KiB at Linux's
// smallest MSS, 48).
const maxSegs = 65535/48 + 1

// segStride is the spacing of segment headers: VXLAN and Ethernet, IP with
// options, TCP with options, rounded up.
const segStride = (encap.Headroom + 60 + 60 + 7) &^ 7

// Run runs the relay until ctx is done or a device fails. ready, if not
// nil, is called once the TUN and the socket are open.
func Run(ctx context.Context, cfg Config, ready func()) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	dev, _, err := tunnel.OpenTUN(tunnel.TUNOptions{Name: cfg.TUN, MTU: cfg.MTU, Driver: tunnel.DriverOffload, OwnPoller: cfg.Epoll})
	if err != nil {
		return err
	}
	defer dev.Close()
	if cfg.TxQueueLen > 0 {
		if err := setTxQueueLen(cfg.TUN, cfg.TxQueueLen); err != nil {
			return err
		}
	}
	vio, ok := tunnel.RawVnet(dev)
	if !ok {
		return errors.New("floor: the TUN has no virtio-net header calls")
	}
	conn, err := tunnel.ListenUDP(tunnel.UDPOptions{Addr: cfg.Local, SourcePorts: cfg.SourcePorts,
		DisableGRO: cfg.NoGRO, SocketBuffer: cfg.SocketBuffer, OwnPoller: cfg.Epoll})
	if err != nil {
		return err
	}
	defer conn.Close()
	var hdr4, hdr6 [encap.Headroom]byte
	for _, h := range []struct {
		b *[encap.Headroom]byte
		v byte
	}{{&hdr4, 0x45}, {&hdr6, 0x60}} {
		buf := make([]byte, encap.Headroom+encap.IPv6HeaderLen)
		buf[encap.Headroom] = h.v
		if err := encap.Encap(buf, cfg.VNI, cfg.PeerMAC, cfg.MAC); err != nil {
			return err
		}
		copy(h.b[:], buf)
	}
	o := &out{cfg: cfg, vio: vio, conn: conn, hdr4: hdr4, hdr6: hdr6}
	if cfg.SendMsg {
		if o.ms, err = newMsgSender(cfg.Local, cfg.Peer, cfg.ZeroCopy, cfg.SocketBuffer); err != nil {
			return err
		}
		defer func() {
			o.ms.close()
			if cfg.ZeroCopy {
				fmt.Fprintf(os.Stderr, "floor: zero-copy sends %d, completion reports %d, of which copied %d; refused and sent copied %d; send errors %d (last %v)\n",
					o.ms.sent, o.ms.reports, o.ms.copied, o.ms.fallbacks, o.ms.sendErrs, o.ms.lastErr)
			}
		}()
	}
	i := &in{cfg: cfg, conn: conn, vio: vio, co: tunnel.NewCoalescer(vio)}
	errc := make(chan error, 2)
	var ring *tunnel.TUNRing
	if cfg.URing {
		// The ring is set up on the out goroutine's locked thread, which
		// alone may then use it (tunnel.TUNRing).
		rc := make(chan *tunnel.TUNRing, 1)
		go func() {
			errc <- pinned(true, cfg.CPUOut, func() error {
				r, err := tunnel.NewTUNRing(dev, tunnel.TUNRingOptions{Slots: cfg.Batch + 32,
					Headroom: encap.Headroom - tunnel.VnetHdrLen, Multishot: !cfg.URingSingle})
				rc <- r
				if err != nil {
					return err
				}
				return o.runRing(r)
			})
		}()
		if ring = <-rc; ring == nil {
			return <-errc
		}
	} else {
		go func() { errc <- pinned(cfg.LockThreads, cfg.CPUOut, o.run) }()
	}
	if ready != nil {
		ready()
	}
	go func() { errc <- pinned(cfg.LockThreads, cfg.CPUIn, i.run) }()
	stop := func() {
		if ring != nil {
			ring.Close()
		}
		dev.Close()
		conn.Close()
	}
	select {
	case <-ctx.Done():
		stop()
		<-errc
		<-errc
		return nil
	case err := <-errc:
		stop()
		<-errc
		return err
	}
}

// pinned runs fn, on a locked OS thread if lock, pinned to cpu if >= 0.
func pinned(lock bool, cpu int, fn func() error) error {
	if lock {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	if cpu >= 0 {
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return fmt.Errorf("floor: pin to CPU %d: %w", cpu, err)
		}
	}
	return fn()
}

func closed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF)
}

// out moves packets from the TUN to the peer.
type out struct {
	cfg        Config
	vio        tunnel.VnetIO
	conn       tunnel.Conn
	hdr4, hdr6 [encap.Headroom]byte
	ms         *msgSender // with Config.SendMsg: the super-packets' sender
}

func (o *out) run() error {
	slab := make([]byte, 3*slot)
	hdrs := make([]byte, maxSegs*segStride)
	frames := make([][]byte, 0, o.cfg.Batch+2*maxSegs)
	msgs := make([]tunnel.WriteMessage, 0, 2+maxSegs)
	for {
		frames, msgs = frames[:0], msgs[:0]
		off, n := 0, 0
		var super []byte // the batch's super-packet, with its header
		var flow uint32  // the flow hash of the batch's first packet
		for n < o.cfg.Batch && len(slab)-off >= slot {
			buf := slab[off+encap.Headroom-tunnel.VnetHdrLen : off+slot]
			k, err := o.vio.Read(buf, n == 0)
			if err != nil {
				if n > 0 {
					break
				}
				if closed(err) {
					return nil
				}
				continue
			}
			if k == 0 {
				break
			}
			if k <= tunnel.VnetHdrLen {
				continue
			}
			n++
			vnet, pkt := buf[:tunnel.VnetHdrLen], buf[tunnel.VnetHdrLen:k]
			if tunnel.IsGSO(vnet) {
				super = buf[:k]
				break
			}
			if !tunnel.CompleteChecksum(vnet, pkt) {
				continue
			}
			if len(frames) == 0 {
				flow = encap.FlowHash(pkt)
			}
			frame := slab[off : off+encap.Headroom+len(pkt)]
			o.header(frame, pkt[0])
			frames = append(frames, frame)
			off = (off + encap.Headroom + len(pkt) + 7) &^ 7
		}
		if !o.send(frames, msgs, hdrs, super, flow) {
			return nil
		}
		if n == o.cfg.Batch && o.cfg.Pace > 0 {
			time.Sleep(o.cfg.Pace)
		}
	}
}

// runRing is run with Config.URing: the TUN is read through the io_uring
// ring r, one slot per packet (its header written into the slot's
// headroom), and the batch's slots go back to the ring once it is sent.
// It frees r when it returns.
func (o *out) runRing(r *tunnel.TUNRing) error {
	defer r.Free()
	hdrs := make([]byte, maxSegs*segStride)
	frames := make([][]byte, 0, o.cfg.Batch+2*maxSegs)
	msgs := make([]tunnel.WriteMessage, 0, 2+maxSegs)
	held := make([]int, 0, o.cfg.Batch)
	const at = encap.Headroom - tunnel.VnetHdrLen
	for {
		frames, msgs, held = frames[:0], msgs[:0], held[:0]
		var super []byte
		var flow uint32
		for len(held) < o.cfg.Batch {
			slot, k, err := r.Read(len(held) == 0)
			if err != nil {
				if len(held) > 0 {
					break
				}
				if closed(err) {
					return nil
				}
				continue
			}
			if k == 0 {
				break
			}
			held = append(held, slot)
			if k <= tunnel.VnetHdrLen {
				continue
			}
			s := r.Slot(slot)
			buf := s[at : at+k]
			vnet, pkt := buf[:tunnel.VnetHdrLen], buf[tunnel.VnetHdrLen:]
			if tunnel.IsGSO(vnet) {
				super = buf
				break
			}
			if !tunnel.CompleteChecksum(vnet, pkt) {
				continue
			}
			if len(frames) == 0 {
				flow = encap.FlowHash(pkt)
			}
			frame := s[:encap.Headroom+len(pkt)]
			o.header(frame, pkt[0])
			frames = append(frames, frame)
		}
		ok := o.send(frames, msgs, hdrs, super, flow)
		for _, slot := range held {
			r.Release(slot)
		}
		if !ok {
			return nil
		}
	}
}

// send sends one batch: frames, small packets with their headers, and the
// super-packet super (its virtio-net header, then the packet) if not nil,
// with msgs as room for the messages. It reports false once the socket is
// closed.
func (o *out) send(frames [][]byte, msgs []tunnel.WriteMessage, hdrs, super []byte, flow uint32) bool {
	peer := o.cfg.Peer
	if len(frames) > 0 {
		msgs = append(msgs, tunnel.WriteMessage{Frames: frames, Addr: peer, Flow: flow})
	}
	if super != nil {
		msgs = o.segment(msgs, frames[len(frames):], hdrs, super)
	}
	if o.ms != nil && super != nil {
		// The super-packet's messages follow the batch's others.
		k := len(msgs)
		for k > 0 && msgs[k-1].Segment > 0 {
			k--
		}
		if k > 0 {
			if err := o.conn.WriteBatch(msgs[:k]); err != nil && closed(err) {
				return false
			}
		}
		for j := k; j < len(msgs); j++ {
			o.ms.send(&msgs[j])
		}
		msgs = msgs[:0]
	}
	if len(msgs) == 0 {
		return true
	}
	err := o.conn.WriteBatch(msgs)
	for i := range msgs {
		msgs[i].Frames = nil
	}
	return err == nil || !closed(err)
}

func (o *out) header(frame []byte, v byte) {
	if v>>4 == 6 {
		copy(frame, o.hdr6[:])
	} else {
		copy(frame, o.hdr4[:])
	}
}

// segment appends the UDP_SEGMENT messages of the super-packet b (its
// virtio-net header, then the packet) to msgs, with frames taken from
// the free capacity frames offers.
func (o *out) segment(msgs []tunnel.WriteMessage, frames [][]byte, hdrs, b []byte) []tunnel.WriteMessage {
	vnet, pkt := b[:tunnel.VnetHdrLen], b[tunnel.VnetHdrLen:]
	s, ok := tunnel.ParseSuper(vnet, pkt)
	if !ok {
		return msgs
	}
	flow := encap.FlowHash(pkt)
	seg := encap.Headroom + s.HdrLen() + s.MSS()
	perMsg := max(1, min(64, (65535-40-8)/seg))
	n := s.Segments()
	for first := 0; first < n; first += perMsg {
		k := min(perMsg, n-first)
		start := len(frames)
		for j := first; j < first+k; j++ {
			h := hdrs[j*segStride : j*segStride+encap.Headroom+s.HdrLen()]
			o.header(h, pkt[0])
			chunk := s.Header(h[encap.Headroom:], j)
			frames = append(frames, h, chunk)
		}
		msgs = append(msgs, tunnel.WriteMessage{Frames: frames[start:len(frames):len(frames)], Addr: o.cfg.Peer, Flow: flow, Segment: seg})
	}
	return msgs
}

// in moves datagrams from the peer to the TUN.
type in struct {
	cfg    Config
	conn   tunnel.Conn
	vio    tunnel.VnetIO
	co     *tunnel.Coalescer
	single [2][]byte
	vnet   [tunnel.VnetHdrLen]byte
}

func (i *in) run() error {
	slots, size := i.conn.BatchSize(), encap.Headroom+i.cfg.MTU+256
	if i.conn.GRO() {
		slots, size = max(1, slots/4), 65535
	}
	slab := make([]byte, slots*size)
	msgs := make([]tunnel.ReadMessage, slots)
	for k := range msgs {
		msgs[k].Buf = slab[k*size : (k+1)*size : (k+1)*size]
	}
	for {
		n, err := i.conn.ReadBatch(msgs)
		if err != nil {
			if closed(err) {
				return nil
			}
			continue
		}
		for k := range n {
			m := &msgs[k]
			data := m.Buf[:m.N]
			seg := m.Segment
			if seg <= 0 {
				seg = len(data)
			}
			for off := 0; off < len(data); off += seg {
				frame := data[off:min(off+seg, len(data))]
				if len(frame) <= encap.Headroom {
					continue
				}
				if err := i.write(frame[encap.Headroom:]); err != nil && closed(err) {
					return nil
				}
			}
		}
		if err := i.co.Flush(); err != nil && closed(err) {
			return nil
		}
	}
}

func (i *in) write(pkt []byte) error {
	if !i.cfg.NoCoalesce {
		return i.co.Add(pkt)
	}
	tunnel.FinishPartialChecksum(pkt)
	i.single[0], i.single[1] = i.vnet[:], pkt
	err := i.vio.Write(i.single[:])
	i.single[1] = nil
	return err
}

// setTxQueueLen sets the transmit queue length of the interface name (a
// TUN resizes its packet ring to match).
func setTxQueueLen(name string, n int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("floor: txqueuelen: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("floor: txqueuelen: %w", err)
	}
	ifr.SetUint32(uint32(n))
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFTXQLEN, ifr); err != nil {
		return fmt.Errorf("floor: set %s txqueuelen %d: %w", name, n, err)
	}
	return nil
}
