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
}

type outGroup struct {
	route *routes.Route
	flow  uint32
	n     int // packets
	bytes int // inner bytes
}

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
	stride := encap.Headroom + pktMax
	slab := make([]byte, stride*nbufs)
	for i := range p.bufs {
		p.bufs[i] = slab[i*stride : (i+1)*stride : (i+1)*stride]
	}
	return p
}

func (p *outPump) run() {
	t := p.t
	consecutive := 0
	for {
		n, err := t.dev.Read(p.bufs, p.sizes, encap.Headroom)
		if err != nil {
			if isClosedErr(err) || t.stopping() {
				return
			}
			t.out.errors.Add(1)
			p.readErrs.report(err)
			consecutive++
			t.backoff(consecutive)
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
	for i := range n {
		p.group[i] = -1
		size := p.sizes[i]
		pkt := p.bufs[i][encap.Headroom : encap.Headroom+size]
		r, reason := p.classify(snap, pkt)
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
	}
	if len(p.groups) == 0 {
		t.out.batches.Add(1)
		return
	}
	// Lay the frames out group by group, in packet order within a group.
	p.msgs = p.msgs[:len(p.groups)]
	off := 0
	for g := range p.groups {
		gr := &p.groups[g]
		ep := gr.route.Peer.Endpoint
		if ep.Port() == 0 {
			ep = netip.AddrPortFrom(ep.Addr(), t.port)
		}
		p.msgs[g] = WriteMessage{Frames: p.frames[off : off : off+gr.n], Addr: ep, Flow: gr.flow}
		off += gr.n
	}
	for i := range n {
		if g := p.group[i]; g >= 0 {
			p.msgs[g].Frames = append(p.msgs[g].Frames, p.bufs[i][:encap.Headroom+p.sizes[i]])
		}
	}
	if err := t.conn.WriteBatch(p.msgs); err != nil && !isClosedErr(err) {
		p.sendErrs.report(err)
	}
	now := time.Now().UnixNano()
	var sentPkts, sentBytes uint64
	for g := range p.groups {
		gr := &p.groups[g]
		sent := p.msgs[g].Sent
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
		p.groups[g].route = nil
	}
	t.out.packets.Add(sentPkts)
	t.out.bytes.Add(sentBytes)
	t.out.batches.Add(1)
}

// dropNone is classify's "no drop".
const dropNone = numDropReasons

// classify finds the route for pkt, or the reason to drop it. An oversized
// packet is answered with ICMP here.
func (p *outPump) classify(snap *routes.Snapshot, pkt []byte) (*routes.Route, DropReason) {
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
	case len(pkt) > p.t.mtu:
		p.icmp.tooBig(snap, pkt)
		return nil, DropTooBig
	}
	return r, dropNone
}

// ipv4DF reports the Don't Fragment bit of an IPv4 header.
func ipv4DF(pkt []byte) bool { return binary.BigEndian.Uint16(pkt[6:8])&0x4000 != 0 }
