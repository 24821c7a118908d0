package tunnel

import (
	"encoding/binary"
)

// Scatter-gather coalescing of received packets for the offloading TUN.
//
// A UDP GRO receive leaves many VXLAN frames of one sender back to back in
// one buffer. After decapsulation, consecutive TCP segments of one flow
// (or UDP datagrams of one flow and size) are written to the TUN as ONE
// super-packet behind a virtio-net header (GSO_TCPV4/6 or GSO_UDP_L4,
// NEEDS_CSUM), with writev: the iovec list is the virtio-net header and the
// first packet's headers (lengths rewritten, in a small scratch buffer),
// then each packet's payload where it lies in the receive buffer. Nothing
// is copied in userspace; each packet is read once, to verify its checksum,
// because the kernel will trust a NEEDS_CSUM super-packet and would compute
// fresh checksums over a corrupted payload when it segments it.
//
// The rules are those of Linux's GRO (tcp_gro_receive, udp_gro_receive):
// same addresses, ports, IP TOS/traffic class, TTL/hop limit and flow
// label; IPv4 without options and with DF (so IDs carry nothing); TCP
// sequence numbers contiguous, same acknowledgment, window, flags and
// options (including timestamps), no CWR after the first segment, and the
// run ends at a segment with PSH or FIN, or one shorter than the first;
// UDP datagrams all of the first's size but the last. Anything else is
// written as it is, behind a GSO_NONE header.

const (
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpURG = 0x20
	tcpACK = 0x10

	// groMaxSegs bounds a run: the kernel's UDP_MAX_SEGMENTS for UDP; for
	// TCP, far more than 64 KiB of full-sized segments needs.
	groMaxSegsUDP = 64
	groMaxSegsTCP = 255
)

// groPkt is a received packet's parse for coalescing. ok is false if it may
// not join or start a run.
type groPkt struct {
	ok            bool
	proto         byte
	ipLen, hdrLen int
	payload       int
}

// parseGRO decides whether pkt (a decapsulated IPv4 or IPv6 packet with
// consistent length fields) may be coalesced, verifying its transport
// checksum unless trusted: it was just completed from a partial one, or
// the datagram's outer checksum, which covers it, was verified by the
// kernel (steer_linux.go).
func parseGRO(pkt []byte, trusted bool) groPkt {
	var g groPkt
	var pseudo uint64
	switch pkt[0] >> 4 {
	case 4:
		// No options, DF, not a fragment.
		if len(pkt) < 20 || pkt[0] != 0x45 || binary.BigEndian.Uint16(pkt[6:8]) != 0x4000 || checksum(pkt[:20], 0) != 0xffff {
			return g
		}
		g.ipLen, g.proto = 20, pkt[9]
		pseudo = checksumAdd(0, pkt[12:20])
	case 6:
		if len(pkt) < 40 {
			return g
		}
		g.ipLen, g.proto = 40, pkt[6]
		pseudo = checksumAdd(0, pkt[8:40])
	default:
		return g
	}
	l4 := pkt[g.ipLen:]
	switch g.proto {
	case protoTCP:
		if len(l4) < 20 {
			return g
		}
		thl := int(l4[12]>>4) * 4
		if thl < 20 || thl > len(l4) || l4[13]&(tcpSYN|tcpRST|tcpURG) != 0 || l4[13]&tcpACK == 0 {
			return g
		}
		g.hdrLen = g.ipLen + thl
	case protoUDP:
		if len(l4) < 8 || int(binary.BigEndian.Uint16(l4[4:6])) != len(l4) || binary.BigEndian.Uint16(l4[6:8]) == 0 {
			return g // a wrong length, or no checksum to verify
		}
		g.hdrLen = g.ipLen + 8
	default:
		return g
	}
	g.payload = len(pkt) - g.hdrLen
	if g.payload == 0 {
		return g // pure ACKs never coalesce
	}
	if !trusted && fold(checksumFast(pseudo+uint64(g.proto)+uint64(len(l4)), l4)) != 0xffff {
		return g // a bad checksum: written alone, the kernel drops it
	}
	g.ok = true
	return g
}

// groRun is a run of packets being coalesced: first is the first packet,
// pieces its headers' slot (filled when the run is written) and then every
// packet's payload. The zero value is an empty run.
type groRun struct {
	first   []byte
	g       groPkt // the first packet's parse
	n       int    // packets
	bytes   int    // their total inner length
	payload int    // total payload
	nextSeq uint32 // TCP: the sequence number the next segment must have
	flags   byte   // TCP: PSH and FIN of the last segment
	closed  bool   // no packet may join any more
	pieces  [][]byte
}

// start begins a run with pkt.
func (r *groRun) start(pkt []byte, g groPkt) {
	r.first, r.g, r.n, r.bytes, r.payload = pkt, g, 1, len(pkt), g.payload
	r.pieces = append(r.pieces[:0], nil, pkt[g.hdrLen:])
	r.closed = false
	r.flags = 0
	if g.proto == protoTCP {
		tcp := pkt[g.ipLen:]
		r.nextSeq = binary.BigEndian.Uint32(tcp[4:8]) + uint32(g.payload)
		r.flags = tcp[13] & (tcpPSH | tcpFIN)
		r.closed = r.flags != 0
	}
}

// add appends pkt to the run if it may join, and reports whether it did.
func (r *groRun) add(pkt []byte, g groPkt) bool {
	f := r.first
	switch {
	case r.closed || r.n == 0 || g.proto != r.g.proto || g.hdrLen != r.g.hdrLen || g.ipLen != r.g.ipLen:
		return false
	case g.payload > r.g.payload || r.g.hdrLen+r.payload+g.payload > 65535:
		return false
	}
	if g.ipLen == 20 {
		// Version/IHL and TOS; flags, TTL and protocol; addresses.
		if binary.BigEndian.Uint16(pkt[0:2]) != binary.BigEndian.Uint16(f[0:2]) ||
			binary.BigEndian.Uint32(pkt[6:10]) != binary.BigEndian.Uint32(f[6:10]) ||
			binary.BigEndian.Uint64(pkt[12:20]) != binary.BigEndian.Uint64(f[12:20]) {
			return false
		}
	} else {
		// Version, traffic class and flow label; next header and hop
		// limit; addresses.
		if binary.BigEndian.Uint32(pkt[0:4]) != binary.BigEndian.Uint32(f[0:4]) ||
			binary.BigEndian.Uint16(pkt[6:8]) != binary.BigEndian.Uint16(f[6:8]) ||
			string(pkt[8:40]) != string(f[8:40]) {
			return false
		}
	}
	l4, f4 := pkt[g.ipLen:g.hdrLen], f[g.ipLen:g.hdrLen]
	if binary.BigEndian.Uint32(l4[0:4]) != binary.BigEndian.Uint32(f4[0:4]) {
		return false // ports
	}
	if g.proto == protoUDP {
		if r.n == groMaxSegsUDP {
			return false
		}
	} else {
		if r.n == groMaxSegsTCP || binary.BigEndian.Uint32(l4[4:8]) != r.nextSeq ||
			binary.BigEndian.Uint32(l4[8:12]) != binary.BigEndian.Uint32(f4[8:12]) || // ack
			l4[12] != f4[12] || l4[13]&^(tcpPSH|tcpFIN) != f4[13]&^(tcpPSH|tcpFIN|tcpCWR) || // offset, flags
			binary.BigEndian.Uint16(l4[14:16]) != binary.BigEndian.Uint16(f4[14:16]) || // window
			string(l4[20:]) != string(f4[20:]) { // options
			return false
		}
		r.nextSeq += uint32(g.payload)
		r.flags = l4[13] & (tcpPSH | tcpFIN)
		r.closed = r.flags != 0
	}
	if g.payload < r.g.payload {
		r.closed = true // a short segment is the last
	}
	r.n++
	r.bytes += len(pkt)
	r.payload += g.payload
	r.pieces = append(r.pieces, pkt[g.hdrLen:])
	return true
}

// header writes the run's virtio-net header and IP and transport headers
// into dst (at least vnetHdrLen+hdrLen bytes, see segHdrMax) and sets
// pieces[0] to them; the run is then written as pieces. A run of one
// packet is that packet behind a GSO_NONE header.
func (r *groRun) header(dst []byte) {
	g := r.g
	if r.n == 1 {
		vnetHdr{}.put(dst)
		r.pieces[0] = dst[:vnetHdrLen]
		r.pieces[1] = r.first
		return
	}
	h := dst[vnetHdrLen : vnetHdrLen+g.hdrLen]
	copy(h, r.first[:g.hdrLen])
	total := g.hdrLen + r.payload
	l4Len := total - g.ipLen
	var pseudo uint64
	vh := vnetHdr{flags: vnetFlagNeedsCsum, hdrLen: uint16(g.hdrLen), gsoSize: uint16(g.payload), csumStart: uint16(g.ipLen)}
	if g.ipLen == 20 {
		binary.BigEndian.PutUint16(h[2:4], uint16(total))
		h[10], h[11] = 0, 0
		binary.BigEndian.PutUint16(h[10:12], ^checksum(h[:20], 0))
		pseudo = checksumAdd(0, h[12:20])
		vh.gsoType = vnetGSOTCPv4
	} else {
		binary.BigEndian.PutUint16(h[4:6], uint16(l4Len))
		pseudo = checksumAdd(0, h[8:40])
		vh.gsoType = vnetGSOTCPv6
	}
	l4 := h[g.ipLen:]
	pseudo += uint64(g.proto) + uint64(l4Len)
	if g.proto == protoTCP {
		l4[13] |= r.flags
		vh.csumOffset = 16
	} else {
		binary.BigEndian.PutUint16(l4[4:6], uint16(l4Len))
		vh.gsoType = vnetGSOUDPL4
		vh.csumOffset = 6
	}
	// NEEDS_CSUM: the field holds the pseudo-header sum, not complemented.
	binary.BigEndian.PutUint16(l4[vh.csumOffset:], fold(pseudo))
	vh.put(dst)
	r.pieces[0] = dst[:vnetHdrLen+g.hdrLen]
}

// reset empties the run, dropping its references to receive buffers.
func (r *groRun) reset() {
	clear(r.pieces)
	r.pieces = r.pieces[:0]
	r.first, r.n, r.bytes, r.payload = nil, 0, 0, 0
}
