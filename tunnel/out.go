package tunnel

import (
	"encoding/binary"
	"net/netip"
	"time"

	"overlay/encap"
	"overlay/routes"
)

// outPump moves packets from the TUN to peers. All its buffers are its
// own, allocated once in newOutPump.
type outPump struct {
	t     *Tunnel
	bufs  [][]byte // read buffers, packet at [encap.Headroom:]
	sizes []int

	// Grouping: packets of one (peer, flow) go out in one message, in
	// order. group[i] is packet i's group, or -1 if dropped.
	group  []int
	groups []outGroup
	frames [][]byte // backing array of every message's Frames
	msgs   []WriteMessage

	icmp     icmpWriter
	readErrs errorLog
	sendErrs errorLog

	// Scatter-gather mode (gso.go), with a device that reads packets
	// with their virtio-net headers: vr is the device, slab holds the
	// packets of one batch back to back (bufs[i] points into it), vh[i]
	// is packet i's header, and hdrs holds the segment headers of the
	// batch's super-packet, the last packet of a batch.
	vr   vnetReader
	slab []byte
	vh   []vnetHdr
	hdrs []byte
}

type outGroup struct {
	route *routes.Route
	flow  uint32
	n     int // packets
	bytes int // inner bytes
	msgs  int // messages: 1, or a super-packet's sends
}

// vnetReader is a device that reads one packet at a time with its
// virtio-net header (the Linux offload TUN).
type vnetReader interface {
	readVnet(buf []byte, wait bool) (int, error)
}

// sgSlot is the room one scatter-gather read needs in the slab: headroom
// and the largest packet; the virtio-net header lies in the headroom.
const sgSlot = encap.Headroom + 65535

// segHdrStride is the spacing of segment headers in outPump.hdrs.
const segHdrStride = (segHdrMax + 7) &^ 7

func newOutPump(t *Tunnel) *outPump {
	// A read yields packets no longer than the device MTU; keep room for
	// a larger overlay MTU too, so oversized packets arrive whole and can
	// be answered.
	pktMax := max(t.dev.MTU(), t.mtu, 1280)
	if t.dev.BatchSize() == 1 {
		pktMax = 65535 // one buffer: room for anything the device may hold
	}
	// An offloading device may drain several reads into one batch as long
	// as a whole super-packet still fits: give it room for one more.
	nbufs := t.batch
	if t.dev.BatchSize() > 1 {
		nbufs += t.dev.BatchSize()
	}
	p := &outPump{
		t:        t,
		bufs:     make([][]byte, nbufs),
		sizes:    make([]int, nbufs),
		group:    make([]int, nbufs),
		groups:   make([]outGroup, 0, nbufs),
		frames:   make([][]byte, nbufs),
		msgs:     make([]WriteMessage, 0, nbufs),
		icmp:     newICMPWriter(t),
		readErrs: errorLog{log: t.log, msg: "TUN read failed"},
		sendErrs: errorLog{log: t.log, msg: "UDP send failed"},
	}
	if vr, ok := t.dev.(vnetReader); ok && !t.naive {
		p.vr = vr
		p.slab = make([]byte, 3*sgSlot)
		p.vh = make([]vnetHdr, nbufs)
		p.hdrs = make([]byte, maxSuperSegs*segHdrStride)
		p.frames = make([][]byte, nbufs+2*maxSuperSegs)
		p.msgs = make([]WriteMessage, 0, nbufs+maxSuperSegs)
		return p
	}
	stride := encap.Headroom + pktMax
	slab := make([]byte, stride*nbufs)
	for i := range p.bufs {
		p.bufs[i] = slab[i*stride : (i+1)*stride : (i+1)*stride]
	}
	return p
}

// readSG reads a batch in scatter-gather mode: it blocks for the first
// packet, then drains what the device holds while the slab has room, up to
// and including the first GSO super-packet.
func (p *outPump) readSG() (int, error) {
	off, n := 0, 0
	for n < len(p.bufs) && len(p.slab)-off >= sgSlot {
		buf := p.slab[off+encap.Headroom-vnetHdrLen : off+sgSlot]
		k, err := p.vr.readVnet(buf, n == 0)
		if err != nil {
			if n > 0 {
				break // the error will come back on the next read
			}
			return 0, err
		}
		if k == 0 {
			break
		}
		if k <= vnetHdrLen {
			p.t.out.drops[DropMalformed].Add(1)
			continue
		}
		p.vh[n] = parseVnetHdr(buf)
		size := k - vnetHdrLen
		end := off + encap.Headroom + size
		p.bufs[n] = p.slab[off:end:end]
		p.sizes[n] = size
		n++
		off = (end + 7) &^ 7
		if p.vh[n-1].gsoType != vnetGSONone {
			break
		}
	}
	return n, nil
}

func (p *outPump) run() {
	t := p.t
	consecutive := 0
	for {
		var n int
		var err error
		if p.vr != nil {
			n, err = p.readSG()
		} else {
			n, err = t.dev.Read(p.bufs, p.sizes, encap.Headroom)
		}
		if err != nil {
			if t.readFailed(err, &t.out, &p.readErrs, &consecutive) {
				return
			}
			continue
		}
		consecutive = 0
		if n > 0 {
			p.process(n)
		}
	}
}

// process handles the n packets of one read.
func (p *outPump) process(n int) {
	t := p.t
	snap := t.table.Load()
	p.groups = p.groups[:0]
	last := -1
	super := -1 // the batch's GSO super-packet, in scatter-gather mode
	for i := range n {
		p.group[i] = -1
		size := p.sizes[i]
		pkt := p.bufs[i][encap.Headroom : encap.Headroom+size]
		if p.vr != nil {
			h := p.vh[i]
			if h.gsoType != vnetGSONone {
				super = i
				continue
			}
			if h.flags&vnetFlagNeedsCsum != 0 && !completeChecksum(pkt, int(h.csumStart), int(h.csumOffset)) {
				t.out.drops[DropMalformed].Add(1)
				continue
			}
		}
		r, reason := p.classify(snap, pkt, true)
		if reason != dropNone {
			t.out.drops[reason].Add(1)
			continue
		}
		if err := encap.Encap(p.bufs[i][:encap.Headroom+size], t.vni, r.Peer.MAC, t.mac); err != nil {
			t.out.drops[DropMalformed].Add(1)
			continue
		}
		flow := encap.FlowHash(pkt)
		// Consecutive packets are usually of one flow: try the last group
		// before scanning.
		g := -1
		if last >= 0 && p.groups[last].route == r && p.groups[last].flow == flow {
			g = last
		} else {
			for j := range p.groups {
				if p.groups[j].route == r && p.groups[j].flow == flow {
					g = j
					break
				}
			}
			if g < 0 {
				g = len(p.groups)
				p.groups = append(p.groups, outGroup{route: r, flow: flow})
			}
		}
		last = g
		p.group[i] = g
		p.groups[g].n++
		p.groups[g].bytes += size
		p.groups[g].msgs = 1
	}
	// Lay the frames out group by group, in packet order within a group.
	p.msgs = p.msgs[:len(p.groups)]
	off := 0
	for g := range p.groups {
		gr := &p.groups[g]
		p.msgs[g] = WriteMessage{Frames: p.frames[off : off : off+gr.n], Addr: p.endpoint(gr.route), Flow: gr.flow}
		off += gr.n
	}
	for i := range n {
		if g := p.group[i]; g >= 0 {
			p.msgs[g].Frames = append(p.msgs[g].Frames, p.bufs[i][:encap.Headroom+p.sizes[i]])
		}
	}
	if super >= 0 {
		// Last in the batch, so its messages follow every earlier packet
		// of its flow.
		p.layoutSuper(snap, super, off)
	}
	if len(p.groups) == 0 {
		t.out.batches.Add(1)
		return
	}
	if err := t.conn.WriteBatch(p.msgs); err != nil && !isClosedErr(err) {
		p.sendErrs.report(err)
	}
	now := time.Now().UnixNano()
	var sentPkts, sentBytes uint64
	m := 0
	for g := range p.groups {
		gr := &p.groups[g]
		sent := 0
		for _, msg := range p.msgs[m : m+gr.msgs] {
			sent += msg.Sent
		}
		m += gr.msgs
		if lost := gr.n - sent; lost > 0 {
			t.out.drops[DropSend].Add(uint64(lost))
		}
		if sent == 0 {
			continue
		}
		// Partial sends are rare; their bytes are prorated.
		b := uint64(gr.bytes)
		if sent < gr.n {
			b = b * uint64(sent) / uint64(gr.n)
		}
		gr.route.Counters.AddTx(uint64(sent), b, now)
		sentPkts += uint64(sent)
		sentBytes += b
	}
	for g := range p.msgs {
		p.msgs[g].Frames = nil // do not pin buffers through stale messages
	}
	for g := range p.groups {
		p.groups[g].route = nil
	}
	t.out.packets.Add(sentPkts)
	t.out.bytes.Add(sentBytes)
	t.out.batches.Add(1)
}

// dropNone is classify's "no drop".
const dropNone = numDropReasons

// endpoint is a route's peer address, with the default port if it has
// none.
func (p *outPump) endpoint(r *routes.Route) netip.AddrPort {
	ep := r.Peer.Endpoint
	if ep.Port() == 0 {
		ep = netip.AddrPortFrom(ep.Addr(), p.t.port)
	}
	return ep
}

// layoutSuper adds the messages of the super-packet bufs[i] (a GSO packet
// in scatter-gather mode) to p.msgs, as one group; its frames start at
// p.frames[off]. Each message is one UDP_SEGMENT send whose pieces
// alternate between a segment's headers (built in p.hdrs) and the
// segment's payload where it lies in the read buffer.
func (p *outPump) layoutSuper(snap *routes.Snapshot, i, off int) {
	t := p.t
	size := p.sizes[i]
	pkt := p.bufs[i][encap.Headroom : encap.Headroom+size]
	g, ok := parseGSO(pkt, p.vh[i])
	if !ok {
		t.out.drops[DropMalformed].Add(1)
		return
	}
	r, reason := p.classify(snap, pkt, false)
	if reason == dropNone && g.hdrLen+g.mss > t.mtu {
		p.icmp.tooBig(snap, pkt)
		reason = DropTooBig
	}
	if reason != dropNone {
		t.out.drops[reason].Add(uint64(g.n))
		return
	}
	seg := encap.Headroom + g.hdrLen + g.mss // a full segment's frame
	perMsg := max(1, min(maxGSOSegments, maxGSOBytes/seg))
	gr := outGroup{route: r, flow: encap.FlowHash(pkt), n: g.n, bytes: size + (g.n-1)*g.hdrLen}
	ep := p.endpoint(r)
	for s := 0; s < g.n; s += perMsg {
		k := min(perMsg, g.n-s)
		msg := WriteMessage{Frames: p.frames[off : off : off+2*k], Addr: ep, Flow: gr.flow, Segment: seg}
		for j := s; j < s+k; j++ {
			h := p.hdrs[j*segHdrStride : j*segHdrStride+encap.Headroom+g.hdrLen]
			chunk := g.header(h[encap.Headroom:], j)
			// Encap can fail only on the IP version, so only for the
			// first header, before anything is queued.
			if err := encap.Encap(h, t.vni, r.Peer.MAC, t.mac); err != nil {
				t.out.drops[DropMalformed].Add(uint64(g.n))
				return
			}
			msg.Frames = append(msg.Frames, h, chunk)
		}
		off += 2 * k
		p.msgs = append(p.msgs, msg)
		gr.msgs++
	}
	p.groups = append(p.groups, gr)
}

// classify finds the route for pkt, or the reason to drop it. With
// checkMTU, an oversized packet is answered with ICMP here.
func (p *outPump) classify(snap *routes.Snapshot, pkt []byte, checkMTU bool) (*routes.Route, DropReason) {
	if len(pkt) == 0 {
		return nil, DropMalformed
	}
	var r *routes.Route
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < encap.IPv4HeaderLen {
			return nil, DropMalformed
		}
		r = snap.Lookup4([4]byte(pkt[16:20]))
	case 6:
		if len(pkt) < encap.IPv6HeaderLen {
			return nil, DropMalformed
		}
		r = snap.Lookup6([16]byte(pkt[24:40]))
	default:
		return nil, DropMalformed
	}
	switch {
	case r == nil:
		return nil, DropNoRoute
	case r.Local:
		return nil, DropLoop
	case checkMTU && len(pkt) > p.t.mtu:
		p.icmp.tooBig(snap, pkt)
		return nil, DropTooBig
	}
	return r, dropNone
}

// ipv4DF reports the Don't Fragment bit of an IPv4 header.
func ipv4DF(pkt []byte) bool { return binary.BigEndian.Uint16(pkt[6:8])&0x4000 != 0 }
