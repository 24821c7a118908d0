package encap

import "encoding/binary"

// Default outer source-port range. RFC 7348 section 5 recommends the
// dynamic/private range 49152-65535; Linux instead uses its local port range
// (32768-60999 by default, which is why flannel frames carry ports such as
// 33909). Any port is accepted on receive, so the choice only matters for
// spreading flows over ECMP paths and RSS queues. We follow Linux.
const (
	SourcePortMin = 32768
	SourcePortMax = 60999
)

// IP protocol numbers whose first four bytes are a source and destination
// port.
const (
	protoTCP     = 6
	protoUDP     = 17
	protoSCTP    = 132
	protoUDPLite = 136
)

// FlowHash returns a hash of the inner flow of the IP packet pkt: addresses,
// protocol and, when the packet carries them, transport ports (for IPv6 also
// the flow label, as RFC 6438 suggests). Packets of one flow always hash
// alike, across processes and restarts: the hash has no random seed, because
// the outer source port it feeds is visible to the network anyway. The two
// directions of a connection may hash differently.
//
// IPv4 fragments hash without ports, so that all fragments of a datagram
// (only the first of which has ports) take the same path. IPv6 packets whose
// next header is not a transport (extension headers, fragments) hash without
// ports, for the same reason. A packet too short to parse hashes as what
// could be read of it; FlowHash never fails and never reads past pkt.
func FlowHash(pkt []byte) uint32 {
	if len(pkt) == 0 {
		return 0
	}
	var h uint64
	var proto byte
	var l4 []byte
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < IPv4HeaderLen {
			return hashTail(pkt)
		}
		proto = pkt[9]
		h = mix(uint64(binary.BigEndian.Uint32(pkt[12:16]))<<32 | uint64(binary.BigEndian.Uint32(pkt[16:20])))
		frag := binary.BigEndian.Uint16(pkt[6:8]) & 0x3fff // MF + offset
		ihl := int(pkt[0]&0x0f) * 4
		if frag == 0 && ihl >= IPv4HeaderLen && len(pkt) >= ihl {
			l4 = pkt[ihl:]
		}
	case 6:
		if len(pkt) < IPv6HeaderLen {
			return hashTail(pkt)
		}
		proto = pkt[6]
		// Each 64-bit word gets its own round, so no two fields can cancel
		// each other out before being mixed.
		h = mix(binary.BigEndian.Uint64(pkt[8:16]))
		h = mix(h ^ binary.BigEndian.Uint64(pkt[16:24]))
		h = mix(h ^ binary.BigEndian.Uint64(pkt[24:32]))
		h = mix(h ^ binary.BigEndian.Uint64(pkt[32:40]))
		flowLabel := uint64(binary.BigEndian.Uint32(pkt[0:4]) & 0x000fffff)
		h ^= flowLabel << 40
		l4 = pkt[IPv6HeaderLen:]
	default:
		return hashTail(pkt)
	}
	// The last word: protocol above the (possibly absent) ports, in bits
	// that do not overlap the IPv6 flow label folded in above.
	last := uint64(proto) << 32
	switch proto {
	case protoTCP, protoUDP, protoSCTP, protoUDPLite:
		if len(l4) >= 4 {
			last |= uint64(binary.BigEndian.Uint32(l4[:4]))
		}
	}
	h = mix(h ^ last)
	return uint32(h>>32) ^ uint32(h)
}

// SourcePort maps the flow hash of pkt into [lo, hi] (inclusive), the outer
// UDP source port that carries the flow's entropy (RFC 7348 section 5). If
// hi <= lo the result is lo.
func SourcePort(pkt []byte, lo, hi uint16) uint16 {
	if hi <= lo {
		return lo
	}
	span := uint64(hi-lo) + 1
	// Multiply-shift (Lemire) maps the 32-bit hash onto the range without a
	// division; like a modulo, each port gets floor or ceil of 2^32/span
	// hashes, a bias below 1/65536 for any span that fits a port.
	return lo + uint16((uint64(FlowHash(pkt))*span)>>32)
}

// mix is the finalizer of splitmix64, a multiply-xorshift bijection that
// spreads every input bit over the whole word.
func mix(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// hashTail hashes up to the first 8 bytes of a packet that could not be
// parsed, with its length, so even garbage spreads rather than piling onto
// one port.
func hashTail(pkt []byte) uint32 {
	var b [8]byte
	copy(b[:], pkt)
	h := mix(mix(uint64(len(pkt))) ^ binary.BigEndian.Uint64(b[:]))
	return uint32(h>>32) ^ uint32(h)
}
