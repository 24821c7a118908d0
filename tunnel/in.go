package tunnel

import (
	"errors"
	"time"

	"overlay/encap"
	"overlay/routes"
)

// inPump moves datagrams from the underlay to the TUN. All its buffers are
// its own, allocated once in newInPump.
type inPump struct {
	t    *Tunnel
	msgs []ReadMessage
	// read is the Conn's ReadBatch, or readChecksummed for the second
	// pump of a steering Conn (steer_linux.go).
	read func(msgs []ReadMessage) (int, error)
	// trusted: the message being decapsulated had its outer checksum
	// verified, so its packets' own checksums are not checked again.
	trusted bool

	// With an offloading device, Write coalesces packets by appending to
	// the first buffer of a flow, so every packet is copied into a write
	// buffer of its own with room to grow. A plain device writes packets
	// where they lie in the receive buffers.
	copy  bool
	wbufs [][]byte
	wq    [][]byte // packets queued for the next Write
	wqLen int      // their inner bytes

	// Per-peer receive counts, accumulated over runs of one peer.
	cur        *routes.Route
	curN, curB uint64
	now        int64

	readErrs, writeErrs errorLog
	closed              bool // the device was closed during segment

	// Scatter-gather coalescing (gro.go), with a device that takes
	// packets behind a virtio-net header: vw is the device, gro the
	// packets being coalesced, hdr the scratch for its headers.
	vw     func(pieces [][]byte) error // the device's writeVnet, this pump's own
	uso    bool
	gro    groRun
	hdr    []byte
	single [2][]byte

	// p.queue and p.coalesce, bound once so a batch does not allocate.
	queueFn, coalesceFn func(frame, pkt []byte) bool
}

// vnetWriter is a device that writes one packet, behind its virtio-net
// header, from pieces (the Linux offload TUN). Each writer newVnetWriter
// returns is for one goroutine; several may write at once.
type vnetWriter interface {
	newVnetWriter() func(pieces [][]byte) error
	udpGSO() bool
}

// writeBufCap is the capacity of a write buffer: headroom plus the largest
// super-packet GRO may build in it.
const writeBufCap = encap.Headroom + 65535

func newInPump(t *Tunnel, read func(msgs []ReadMessage) (int, error)) *inPump {
	p := &inPump{
		t:         t,
		read:      read,
		copy:      t.dev.BatchSize() > 1,
		readErrs:  errorLog{log: t.log, msg: "UDP receive failed"},
		writeErrs: errorLog{log: t.log, msg: "TUN write failed"},
	}
	p.queueFn, p.coalesceFn = p.queue, p.coalesce
	slots, size := t.batch, encap.Headroom+t.mtu+256
	switch {
	case t.conn.GRO():
		// A GRO slot holds up to 64 KiB of coalesced datagrams; fewer
		// slots carry as many packets.
		slots, size = max(1, t.batch/4), 65535
	case slots == 1:
		size = 65535
	}
	slab := make([]byte, slots*size)
	p.msgs = make([]ReadMessage, slots)
	for i := range p.msgs {
		p.msgs[i].Buf = slab[i*size : (i+1)*size : (i+1)*size]
	}
	p.wq = make([][]byte, 0, t.batch)
	if vw, ok := t.dev.(vnetWriter); ok && !t.naive {
		p.vw, p.uso, p.copy = vw.newVnetWriter(), vw.udpGSO(), false
		p.hdr = make([]byte, vnetHdrLen+segHdrMax)
		p.gro.pieces = make([][]byte, 0, groMaxSegsTCP+1)
		return p
	}
	if p.copy {
		p.wbufs = make([][]byte, t.batch)
		for i := range p.wbufs {
			p.wbufs[i] = make([]byte, writeBufCap)
		}
	}
	return p
}

func (p *inPump) run() {
	t := p.t
	consecutive := 0
	for {
		n, err := p.read(p.msgs)
		if err != nil {
			if t.readFailed(err, &t.in, &p.readErrs, &consecutive) {
				return
			}
			continue
		}
		consecutive = 0
		if n == 0 {
			continue
		}
		if p.vw != nil {
			if !p.processSG(n) {
				return
			}
		} else if !p.process(n) {
			return
		}
	}
}

// decapAll decapsulates every frame in the n received slots (a GRO slot
// holds several), counts the rejects and the peers' receive counters, and
// hands each inner packet with the frame it lies in to handle. It stops
// and returns false as soon as handle does (the device was closed).
func (p *inPump) decapAll(n int, handle func(frame, pkt []byte) bool) bool {
	t := p.t
	snap := t.table.Load()
	p.now = time.Now().UnixNano()
	for i := range n {
		m := &p.msgs[i]
		if m.Truncated {
			t.in.drops[DropTruncated].Add(1)
			continue
		}
		data := m.Buf[:m.N]
		seg := m.Segment
		if seg <= 0 {
			seg = len(data)
		}
		from, ok := t.check.outer(snap, m.Addr.Addr())
		if !ok {
			t.in.drops[DropUnknownSource].Add(uint64((len(data) + seg - 1) / seg))
			continue
		}
		p.trusted = m.Checksummed
		if p.trusted {
			t.in.checksummed.Add(uint64((len(data) + seg - 1) / seg))
		}
		for off := 0; off < len(data); off += seg {
			frame := data[off:min(off+seg, len(data))]
			pkt, err := encap.Decap(frame, t.vni, t.mac)
			if err != nil {
				t.in.drops[decapReason(err)].Add(1)
				continue
			}
			if !p.admit(snap, from, frame, pkt) {
				continue
			}
			if !handle(frame, pkt) {
				return false
			}
		}
	}
	p.settle()
	t.in.batches.Add(1)
	return true
}

// process handles n received slots, queueing the packets for the device's
// batched Write; it returns false once the device is closed.
func (p *inPump) process(n int) bool {
	return p.decapAll(n, p.queueFn) && p.flush()
}

// queue queues one inner packet for flush.
func (p *inPump) queue(frame, pkt []byte) bool {
	t := p.t
	if len(pkt) > t.mtu {
		// A TCP super-packet from a kernel VTEP on this host (tso.go).
		if !p.segment(pkt) {
			t.in.drops[DropTooBig].Add(1)
		} else if p.closed {
			return false
		}
		return true
	}
	if finishPartialChecksum(pkt) {
		t.in.partial.Add(1)
	}
	if p.copy {
		w := p.wbufs[len(p.wq)][:encap.Headroom+len(pkt)]
		copy(w[encap.Headroom:], pkt)
		p.wq = append(p.wq, w)
	} else {
		// frame[:Headroom] is the VXLAN header, free to lose; the
		// capacity is clipped so nothing can write past the frame.
		end := encap.Headroom + len(pkt)
		p.wq = append(p.wq, frame[:end:end])
	}
	p.wqLen += len(pkt)
	return len(p.wq) < cap(p.wq) || p.flush()
}

// processSG handles n received slots in scatter-gather mode: runs of
// packets are coalesced and each run written with one writev, straight
// from the receive buffers. It returns false once the device is closed.
func (p *inPump) processSG(n int) bool {
	return p.decapAll(n, p.coalesceFn) && p.writeRun()
}

// coalesce adds one inner packet to the run being coalesced, or writes
// the run and starts another, or writes the packet alone.
func (p *inPump) coalesce(_, pkt []byte) bool {
	t := p.t
	if len(pkt) > t.mtu {
		// A TCP super-packet from a kernel VTEP on this host (tso.go):
		// segmented into write buffers, written in order after the run.
		if !p.writeRun() {
			return false
		}
		if !p.segment(pkt) {
			t.in.drops[DropTooBig].Add(1)
			return true
		}
		return !p.closed && p.flush()
	}
	partial := finishPartialChecksum(pkt)
	if partial {
		t.in.partial.Add(1)
	}
	g := parseGRO(pkt, partial || p.trusted)
	if g.ok && g.proto == protoUDP && !p.uso {
		g.ok = false
	}
	if g.ok && p.gro.add(pkt, g) {
		return true
	}
	if !p.writeRun() {
		return false
	}
	if g.ok {
		p.gro.start(pkt, g)
		return true
	}
	return p.writeSingle(pkt)
}

// writeRun writes the run being coalesced, if any; it returns false once
// the device is closed.
func (p *inPump) writeRun() bool {
	r := &p.gro
	if r.n == 0 {
		return true
	}
	r.header(p.hdr)
	n, bytes := r.n, r.bytes
	err := p.vw(r.pieces)
	r.reset()
	return p.wrote(n, bytes, err)
}

// writeSingle writes pkt behind a GSO_NONE header.
func (p *inPump) writeSingle(pkt []byte) bool {
	vnetHdr{}.put(p.hdr)
	p.single[0], p.single[1] = p.hdr[:vnetHdrLen], pkt
	err := p.vw(p.single[:])
	p.single[1] = nil
	return p.wrote(1, len(pkt), err)
}

// wrote counts the outcome of writing n packets; it returns false if the
// device is closed.
func (p *inPump) wrote(n, bytes int, err error) bool {
	t := p.t
	if err != nil {
		if isClosedErr(err) {
			return false
		}
		t.in.drops[DropWrite].Add(uint64(n))
		p.writeErrs.report(err)
		return true
	}
	t.in.packets.Add(uint64(n))
	t.in.bytes.Add(uint64(bytes))
	return true
}

// admit makes the inner source check on pkt, sent by from, and attributes
// it to the peer owning its source address; it returns false when pkt is
// dropped (and counted).
func (p *inPump) admit(snap *routes.Snapshot, from *routes.Source, frame, pkt []byte) bool {
	r, reason, ok := p.t.check.inner(snap, from, frame, pkt)
	if !ok {
		p.t.in.drops[reason].Add(1)
		return false
	}
	if r == nil {
		p.t.in.unattributed.Add(1)
		return true
	}
	if r != p.cur {
		p.settle()
		p.cur = r
	}
	p.curN++
	p.curB += uint64(len(pkt))
	return true
}

// settle adds the accumulated run to its peer's counters.
func (p *inPump) settle() {
	if p.cur != nil && p.curN > 0 {
		p.cur.Counters.AddRx(p.curN, p.curB, p.now)
	}
	p.cur, p.curN, p.curB = nil, 0, 0
}

// flush writes the queued packets to the TUN; it returns false once the
// device is closed.
func (p *inPump) flush() bool {
	if len(p.wq) == 0 {
		return true
	}
	t := p.t
	queued, bytes := uint64(len(p.wq)), uint64(p.wqLen)
	_, err := t.dev.Write(p.wq, encap.Headroom)
	clear(p.wq) // do not pin receive buffers through the queue
	p.wq, p.wqLen = p.wq[:0], 0
	if err != nil {
		if isClosedErr(err) {
			return false
		}
		// Write reports one error per failed packet (or coalesced
		// super-packet); count that many drops.
		failed := uint64(1)
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			failed = uint64(len(j.Unwrap()))
		}
		failed = min(failed, queued)
		t.in.drops[DropWrite].Add(failed)
		bytes -= bytes * failed / queued
		queued -= failed
		p.writeErrs.report(err)
	}
	t.in.packets.Add(queued)
	t.in.bytes.Add(bytes)
	return true
}

// decapReason maps encap's sentinel errors to drop reasons.
func decapReason(err error) DropReason {
	switch {
	case errors.Is(err, encap.ErrShortBuffer):
		return DropShort
	case errors.Is(err, encap.ErrNoIFlag):
		return DropNoIFlag
	case errors.Is(err, encap.ErrWrongVNI):
		return DropWrongVNI
	case errors.Is(err, encap.ErrNotOurMAC):
		return DropNotOurMAC
	case errors.Is(err, encap.ErrARP):
		return DropARP
	case errors.Is(err, encap.ErrEtherType):
		return DropEtherType
	case errors.Is(err, encap.ErrVersionMismatch):
		return DropVersion
	case errors.Is(err, encap.ErrTruncatedIP):
		return DropTruncatedIP
	}
	return DropMalformed
}
