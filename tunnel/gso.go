package tunnel

import (
	"encoding/binary"

	"overlay/encap"
)

// Scatter-gather segmentation of the TUN's GSO super-packets.
//
// An offloading TUN hands us a TCP (or UDP) super-packet of up to 64 KiB
// behind a virtio-net header. Rather than copying each segment into a
// buffer of its own, the out pump builds only the headers: for segment i a
// small block of VXLAN + inner Ethernet + IP + transport header (lengths,
// IPv4 ID, sequence number, flags and checksums of that segment), and sends
// header_0, chunk_0, header_1, chunk_1, ... as one iovec list with
// UDP_SEGMENT set to the size of a full segment's frame. The kernel cuts the
// concatenation every gso_size bytes, so each datagram is header_i+chunk_i,
// and the payload is never copied in userspace; it is read once, to compute
// each segment's checksum.
//
// The headers are those a NIC's TSO (or the kernel's software GSO) would
// produce: IPv4 IDs counting up from the super-packet's, sequence numbers
// advancing by the segment size, FIN and PSH on the last segment only, CWR
// on the first only, every checksum complete.

// virtio-net header (struct virtio_net_hdr, include/uapi/linux/virtio_net.h).
const (
	vnetHdrLen = 10

	vnetFlagNeedsCsum = 1

	vnetGSONone   = 0
	vnetGSOTCPv4  = 1
	vnetGSOTCPv6  = 4
	vnetGSOUDPL4  = 5
	vnetGSOECNBit = 0x80
)

// vnetHdr is a decoded virtio-net header. A TUN without TUNSETVNETBE uses
// the host's byte order.
type vnetHdr struct {
	flags, gsoType                         uint8
	hdrLen, gsoSize, csumStart, csumOffset uint16
}

func parseVnetHdr(b []byte) vnetHdr {
	return vnetHdr{
		flags:      b[0],
		gsoType:    b[1],
		hdrLen:     binary.NativeEndian.Uint16(b[2:]),
		gsoSize:    binary.NativeEndian.Uint16(b[4:]),
		csumStart:  binary.NativeEndian.Uint16(b[6:]),
		csumOffset: binary.NativeEndian.Uint16(b[8:]),
	}
}

func (h vnetHdr) put(b []byte) {
	b[0], b[1] = h.flags, h.gsoType
	binary.NativeEndian.PutUint16(b[2:], h.hdrLen)
	binary.NativeEndian.PutUint16(b[4:], h.gsoSize)
	binary.NativeEndian.PutUint16(b[6:], h.csumStart)
	binary.NativeEndian.PutUint16(b[8:], h.csumOffset)
}

// completeChecksum finishes a checksum the kernel left partial
// (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field at start+off holds the
// pseudo-header sum, and the checksum covers pkt[start:]. It reports false
// if the offsets do not fit pkt.
func completeChecksum(pkt []byte, start, off int) bool {
	if start+off+2 > len(pkt) || start >= len(pkt) {
		return false
	}
	c := ^fold(checksumFast(0, pkt[start:]))
	if c == 0 {
		c = 0xffff // as the kernel's skb_checksum_help (CSUM_MANGLED_0)
	}
	binary.BigEndian.PutUint16(pkt[start+off:], c)
	return true
}

// maxSuperSegs bounds the segments of one super-packet: 64 KiB at the
// smallest MSS Linux sends (48 bytes). A super-packet needing more is
// dropped as malformed.
const maxSuperSegs = 65535/48 + 1

// segHdrMax is the largest segment header block: VXLAN and Ethernet, an
// IPv4 header with options (60) or IPv6 (40), a TCP header with options
// (60).
const segHdrMax = encap.Headroom + 60 + 60

// gsoPacket is a super-packet to segment: pkt is the inner IP packet,
// hdrLen its IP plus transport headers, mss the payload per segment.
type gsoPacket struct {
	pkt           []byte
	ipLen, hdrLen int
	proto         byte
	mss           int
	n             int // segments
	sum           uint64
}

// parseGSO checks a super-packet against its virtio-net header.
func parseGSO(pkt []byte, h vnetHdr) (gsoPacket, bool) {
	g := gsoPacket{pkt: pkt, mss: int(h.gsoSize)}
	if len(pkt) == 0 || g.mss == 0 {
		return g, false
	}
	v := pkt[0] >> 4
	switch h.gsoType &^ vnetGSOECNBit {
	case vnetGSOTCPv4:
		if v != 4 {
			return g, false
		}
		g.proto = protoTCP
	case vnetGSOTCPv6:
		if v != 6 {
			return g, false
		}
		g.proto = protoTCP
	case vnetGSOUDPL4:
		g.proto = protoUDP
	default:
		return g, false
	}
	switch v {
	case 4:
		if len(pkt) < encap.IPv4HeaderLen {
			return g, false
		}
		g.ipLen = int(pkt[0]&0x0f) * 4
		if g.ipLen < encap.IPv4HeaderLen || pkt[9] != g.proto || binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
			return g, false
		}
	case 6:
		g.ipLen = encap.IPv6HeaderLen
		if len(pkt) < g.ipLen || pkt[6] != g.proto {
			return g, false
		}
	default:
		return g, false
	}
	l4 := 8
	if g.proto == protoTCP {
		if len(pkt) < g.ipLen+20 {
			return g, false
		}
		l4 = int(pkt[g.ipLen+12]>>4) * 4
		if l4 < 20 {
			return g, false
		}
	}
	g.hdrLen = g.ipLen + l4
	if len(pkt) <= g.hdrLen {
		return g, false
	}
	g.n = (len(pkt) - g.hdrLen + g.mss - 1) / g.mss
	if g.n > maxSuperSegs {
		return g, false
	}
	// The pseudo-header's addresses and protocol are common to every
	// segment; only the length differs.
	if v == 4 {
		g.sum = checksumAdd(0, pkt[12:20])
	} else {
		g.sum = checksumAdd(0, pkt[8:40])
	}
	g.sum += uint64(g.proto)
	return g, true
}

// segLen is the length of segment i's IP packet.
func (g *gsoPacket) segLen(i int) int {
	return g.hdrLen + min(g.mss, len(g.pkt)-g.hdrLen-i*g.mss)
}

// header writes segment i's IP and transport headers into dst (at least
// hdrLen bytes) and returns the segment's payload, a subslice of the
// super-packet.
func (g *gsoPacket) header(dst []byte, i int) []byte {
	pkt := g.pkt
	off := g.hdrLen + i*g.mss
	chunk := pkt[off:min(off+g.mss, len(pkt))]
	h := dst[:g.hdrLen]
	copy(h, pkt[:g.hdrLen])
	total := g.hdrLen + len(chunk)
	if h[0]>>4 == 4 {
		binary.BigEndian.PutUint16(h[2:4], uint16(total))
		binary.BigEndian.PutUint16(h[4:6], binary.BigEndian.Uint16(pkt[4:6])+uint16(i))
		h[10], h[11] = 0, 0
		binary.BigEndian.PutUint16(h[10:12], ^checksum(h[:g.ipLen], 0))
	} else {
		binary.BigEndian.PutUint16(h[4:6], uint16(total-g.ipLen))
	}
	l4 := h[g.ipLen:]
	l4Len := total - g.ipLen
	var off16 int
	if g.proto == protoTCP {
		binary.BigEndian.PutUint32(l4[4:8], binary.BigEndian.Uint32(pkt[g.ipLen+4:])+uint32(i*g.mss))
		if i < g.n-1 {
			l4[13] &^= tcpFIN | tcpPSH
		}
		if i > 0 {
			l4[13] &^= tcpCWR
		}
		off16 = 16
	} else {
		binary.BigEndian.PutUint16(l4[4:6], uint16(l4Len))
		off16 = 6
	}
	l4[off16], l4[off16+1] = 0, 0
	sum := checksumFast(g.sum+uint64(l4Len), l4)
	c := ^fold(checksumFast(sum, chunk))
	if g.proto == protoUDP && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off16:], c)
	return chunk
}
