package tunnel

import (
	"encoding/binary"
	"math/bits"

	"overlay/encap"
)

// Partial checksums from local kernel VTEPs.
//
// A kernel that sends a TCP or UDP packet through a device with checksum
// offload leaves the transport checksum "partial" (CHECKSUM_PARTIAL): the
// field holds only the folded pseudo-header sum, and the device is meant to
// finish it. A kernel vxlan device encapsulates such a packet as it is, and
// over a real NIC the NIC finishes the inner checksum; over a veth (nodes
// that are namespaces or containers on one host) nobody does, and the frame
// reaches our socket with the inner checksum unfinished. A kernel VTEP
// receiving it trusts the skb's partial state, but we hand the packet to a
// TUN as new, and the kernel would drop it as corrupt.
//
// So the in pump recognises a partial checksum (the field equals the
// pseudo-header sum, a constant-time test) and finishes it in software. A
// complete checksum that happens to equal the pseudo-header sum (one in
// 65536) is recomputed to the same value, so it does no harm; the cost is a
// pass over the payload of partial packets only.

// finishPartialChecksum completes the transport checksum of pkt (a
// validated IPv4 or IPv6 packet) if it is partial, and reports whether it
// did.
func finishPartialChecksum(pkt []byte) bool {
	var proto byte
	var l4 []byte
	var pseudo uint64
	switch pkt[0] >> 4 {
	case 4:
		ihl := int(pkt[0]&0x0f) * 4
		if binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 {
			return false // a fragment: no whole transport segment here
		}
		proto, l4 = pkt[9], pkt[ihl:]
		pseudo = checksumAdd(0, pkt[12:20])
	case 6:
		proto, l4 = pkt[6], pkt[encap.IPv6HeaderLen:]
		pseudo = checksumAdd(0, pkt[8:40])
	default:
		return false
	}
	var off int
	switch proto {
	case protoTCP:
		off = 16
		if len(l4) < 20 {
			return false
		}
	case protoUDP:
		off = 6
		if len(l4) < 8 {
			return false
		}
	default:
		return false
	}
	pseudo += uint64(proto) + uint64(len(l4))
	field := binary.BigEndian.Uint16(l4[off:])
	if field != fold(pseudo) {
		return false
	}
	l4[off], l4[off+1] = 0, 0
	c := ^fold(checksumFast(pseudo, l4))
	if proto == protoUDP && c == 0 {
		c = 0xffff // UDP sends a computed zero as all ones (RFC 768)
	}
	binary.BigEndian.PutUint16(l4[off:], c)
	return true
}

const (
	protoTCP = 6
	protoUDP = 17
)

// fold folds a 64-bit one's complement sum to 16 bits.
func fold(sum uint64) uint16 {
	sum = sum>>32 + sum&0xffffffff
	sum = sum>>32 + sum&0xffffffff
	sum = sum>>16 + sum&0xffff
	sum = sum>>16 + sum&0xffff
	sum = sum>>16 + sum&0xffff
	return uint16(sum)
}

// checksumFast adds b to the one's complement sum initial; fold gives the
// 16-bit sum.
//
// It sums little-endian words, which needs no byte swaps (RFC 1071: the
// sum is byte-order independent up to a final swap), 32 bytes a step into
// four independent accumulators, each 64-bit word split in 32-bit halves so
// no carry is ever lost: an accumulator gains less than 2^33 a step, so it
// cannot overflow below 2^31 steps (64 GiB).
func checksumFast(initial uint64, b []byte) uint64 {
	var s0, s1, s2, s3 uint64
	for len(b) >= 32 {
		w0 := binary.LittleEndian.Uint64(b[0:])
		w1 := binary.LittleEndian.Uint64(b[8:])
		w2 := binary.LittleEndian.Uint64(b[16:])
		w3 := binary.LittleEndian.Uint64(b[24:])
		s0 += w0&0xffffffff + w0>>32
		s1 += w1&0xffffffff + w1>>32
		s2 += w2&0xffffffff + w2>>32
		s3 += w3&0xffffffff + w3>>32
		b = b[32:]
	}
	sum := uint64(fold32(s0)) + uint64(fold32(s1)) + uint64(fold32(s2)) + uint64(fold32(s3))
	for len(b) >= 4 {
		sum += uint64(binary.LittleEndian.Uint32(b))
		b = b[4:]
	}
	sum = uint64(fold32(sum))
	for len(b) >= 2 {
		sum += uint64(binary.LittleEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) // the high byte of a big-endian word
	}
	return initial + uint64(bits.ReverseBytes16(fold(sum)))
}

func fold32(sum uint64) uint32 {
	sum = sum>>32 + sum&0xffffffff
	sum = sum>>32 + sum&0xffffffff
	return uint32(sum)
}
