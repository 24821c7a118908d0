package tunnel

import (
	"encoding/binary"

	"overlay/encap"
)

// Inner super-packets from kernel VTEPs on the same host.
//
// A kernel vxlan device whose lower device keeps TSO (a veth between
// containers or namespaces on one host, as in kind-style clusters) sends
// whole TCP super-packets in one VXLAN frame: the skb stays GSO (type
// SKB_GSO_UDP_TUNNEL) across the veth, and a UDP socket that is not a
// tunnel socket receives it unsegmented, with no UDP_GRO control message,
// as one datagram of up to 64 KiB whose inner IP packet is far larger than
// the overlay MTU. Written to the TUN as it is, the kernel would drop it
// when forwarding to a pod (larger than the MTU, DF set) and the sender's
// TCP would stall on retransmissions.
//
// So the in pump segments such a packet in software, as the sender's NIC
// would have: segments of at most MTU bytes, IPv4 IDs counting up, sequence
// numbers advancing, FIN and PSH on the last segment only, CWR on the first
// only, and every checksum computed (the super-packet's own TCP checksum is
// only partial). Anything else larger than the MTU (UDP, IP fragments, IPv6
// with extension headers) is dropped as too big.

// TCP flags cleared on all but the last (FIN, PSH) or the first (CWR)
// segment of a super-packet.
const (
	tcpFIN = 0x01
	tcpPSH = 0x08
	tcpCWR = 0x80
)

// tcpSuper describes a TCP super-packet: the length of its IP header and of
// IP plus TCP headers.
type tcpSuper struct {
	ipLen, hdrLen int
}

// parseTCPSuper checks that pkt is a TCP packet that can be segmented:
// IPv4 that is not a fragment, or IPv6 whose next header is TCP, with a
// whole TCP header.
func parseTCPSuper(pkt []byte) (tcpSuper, bool) {
	var s tcpSuper
	switch pkt[0] >> 4 {
	case 4:
		s.ipLen = int(pkt[0]&0x0f) * 4
		if pkt[9] != protoTCP || binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
			return s, false
		}
	case 6:
		s.ipLen = encap.IPv6HeaderLen
		if pkt[6] != protoTCP {
			return s, false
		}
	default:
		return s, false
	}
	if len(pkt) < s.ipLen+20 {
		return s, false
	}
	thl := int(pkt[s.ipLen+12]>>4) * 4
	if thl < 20 || len(pkt) < s.ipLen+thl {
		return s, false
	}
	s.hdrLen = s.ipLen + thl
	return s, true
}

// segmentTCP writes segment i (of n) of the super-packet pkt, carrying at
// most mss payload bytes, into dst, and returns the segment's length.
// dst must hold s.hdrLen+mss bytes.
func segmentTCP(dst, pkt []byte, s tcpSuper, mss, i, n int) int {
	payload := pkt[s.hdrLen:]
	chunk := payload[i*mss : min((i+1)*mss, len(payload))]
	seg := dst[:s.hdrLen+len(chunk)]
	copy(seg, pkt[:s.hdrLen])
	copy(seg[s.hdrLen:], chunk)

	var pseudo uint64
	if seg[0]>>4 == 4 {
		binary.BigEndian.PutUint16(seg[2:4], uint16(len(seg)))
		binary.BigEndian.PutUint16(seg[4:6], binary.BigEndian.Uint16(pkt[4:6])+uint16(i))
		seg[10], seg[11] = 0, 0
		binary.BigEndian.PutUint16(seg[10:12], ^checksum(seg[:s.ipLen], 0))
		pseudo = checksumAdd(0, seg[12:20])
	} else {
		binary.BigEndian.PutUint16(seg[4:6], uint16(len(seg)-s.ipLen))
		pseudo = checksumAdd(0, seg[8:40])
	}
	tcp := seg[s.ipLen:]
	binary.BigEndian.PutUint32(tcp[4:8], binary.BigEndian.Uint32(pkt[s.ipLen+4:])+uint32(i*mss))
	if i < n-1 {
		tcp[13] &^= tcpFIN | tcpPSH
	}
	if i > 0 {
		tcp[13] &^= tcpCWR
	}
	tcp[16], tcp[17] = 0, 0
	pseudo += protoTCP + uint64(len(tcp))
	binary.BigEndian.PutUint16(tcp[16:18], ^fold(checksumFast(pseudo, tcp)))
	return len(seg)
}

// segment queues the segments of the oversized packet pkt for the TUN, in
// write buffers of the pump's own. It returns false if pkt cannot be
// segmented (the caller drops it as too big); a closed device is reported
// through p.closed.
func (p *inPump) segment(pkt []byte) bool {
	s, ok := parseTCPSuper(pkt)
	mss := p.t.mtu - s.hdrLen
	if !ok || mss <= 0 {
		return false
	}
	if p.wbufs == nil {
		// Plain mode queues packets where they lie, so it has no write
		// buffers until the first super-packet needs them.
		p.wbufs = make([][]byte, cap(p.wq))
		for i := range p.wbufs {
			p.wbufs[i] = make([]byte, writeBufCap)
		}
	}
	n := (len(pkt) - s.hdrLen + mss - 1) / mss
	for i := range n {
		w := p.wbufs[len(p.wq)]
		l := segmentTCP(w[encap.Headroom:], pkt, s, mss, i, n)
		p.wq = append(p.wq, w[:encap.Headroom+l])
		p.wqLen += l
		if len(p.wq) == cap(p.wq) && !p.flush() {
			p.closed = true
			return true
		}
	}
	return true
}
