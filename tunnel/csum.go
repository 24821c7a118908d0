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
// It sums little-endian 64-bit words, which needs no byte swaps (RFC 1071:
// the sum is byte-order independent up to a final swap), 64 bytes a step,
// with an add-with-carry chain (math/bits.Add64, ADD/ADC on amd64 and
// ADDS/ADCS on arm64): one instruction per 8 bytes, the carry out of each
// word added into the next, which is one's complement addition done 64
// bits at a time. The previous version split each word into 32-bit halves
// over four accumulators (two adds, a mask and a shift per word);
// BENCHMARKS.md has the comparison.
func checksumFast(initial uint64, b []byte) uint64 {
	var s, c uint64
	for len(b) >= 64 {
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[0:]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[8:]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[16:]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[24:]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[32:]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[40:]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[48:]), c)
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b[56:]), c)
		b = b[64:]
	}
	for len(b) >= 8 {
		s, c = bits.Add64(s, binary.LittleEndian.Uint64(b), c)
		b = b[8:]
	}
	// The tail (under 8 bytes, starting at an even offset) in a small
	// sum of its own, which cannot overflow.
	var t uint64
	if len(b) >= 4 {
		t += uint64(binary.LittleEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		t += uint64(binary.LittleEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		t += uint64(b[0]) // the high byte of a big-endian word
	}
	s, c = bits.Add64(s, t, c)
	s += c // s is 0 if this carries, so it cannot carry again
	return initial + uint64(bits.ReverseBytes16(fold(s)))
}
