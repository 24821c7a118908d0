package tunnel

import (
	"encoding/binary"
	"net/netip"
	"time"

	"overlay/encap"
	"overlay/routes"
)

// ICMP constants (RFC 792, RFC 1191, RFC 4443).
const (
	protoICMP   = 1
	protoICMPv6 = 58

	icmpDestUnreachable = 3 // code 4: fragmentation needed and DF set
	icmpFragNeeded      = 4
	icmpv6PacketTooBig  = 2

	icmpHeaderLen = 8
	// icmpv4Quote is how much of the offending packet an ICMPv4 error
	// quotes: as much as fits a 576-byte datagram (RFC 1812 4.3.2.3).
	icmpv4Quote = 576 - encap.IPv4HeaderLen - icmpHeaderLen
	// icmpv6Quote: as much as fits the IPv6 minimum MTU (RFC 4443 2.4(c)).
	icmpv6Quote = 1280 - encap.IPv6HeaderLen - icmpHeaderLen

	// ICMP errors are rate limited like the kernel's (icmp_msgs_per_sec):
	// a burst, then a steady rate.
	icmpBurst   = 50
	icmpPerSec  = 1000
	icmpBufSize = encap.Headroom + 1280
)

// icmpWriter answers oversized packets so path MTU discovery works: ICMP
// "fragmentation needed" (type 3 code 4) carrying the overlay MTU for IPv4
// with DF set, ICMPv6 "packet too big" for IPv6. The answer goes back into
// the TUN from the overlay address of our subnet, as a router would send
// it. It belongs to the out pump; its buffer is allocated once.
type icmpWriter struct {
	t      *Tunnel
	buf    []byte
	bufs   [][]byte
	tokens float64
	last   time.Time
	errs   errorLog
}

func newICMPWriter(t *Tunnel) icmpWriter {
	return icmpWriter{
		t: t, buf: make([]byte, icmpBufSize), bufs: make([][]byte, 1),
		tokens: icmpBurst,
		errs:   errorLog{log: t.log, msg: "writing ICMP error to the TUN failed"},
	}
}

// allow takes a token from the bucket.
func (w *icmpWriter) allow() bool {
	now := time.Now()
	if !w.last.IsZero() {
		w.tokens = min(icmpBurst, w.tokens+now.Sub(w.last).Seconds()*icmpPerSec)
	}
	w.last = now
	if w.tokens < 1 {
		return false
	}
	w.tokens--
	return true
}

// tooBig answers pkt, which is larger than the overlay MTU, if it should be
// answered.
func (w *icmpWriter) tooBig(snap *routes.Snapshot, pkt []byte) {
	var n int
	switch pkt[0] >> 4 {
	case 4:
		n = w.fragNeeded(snap, pkt)
	case 6:
		n = w.packetTooBig(snap, pkt)
	}
	if n == 0 || !w.allow() {
		return
	}
	w.bufs[0] = w.buf[:encap.Headroom+n]
	if _, err := w.t.dev.Write(w.bufs, encap.Headroom); err != nil && !isClosedErr(err) {
		w.errs.report(err)
	}
	w.bufs[0] = nil
}

// fragNeeded builds the ICMPv4 answer at w.buf[Headroom:] and returns its
// length, or 0 if pkt must not be answered.
func (w *icmpWriter) fragNeeded(snap *routes.Snapshot, pkt []byte) int {
	if !ipv4DF(pkt) || binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
		return 0 // may be fragmented, or not the first fragment
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < encap.IPv4HeaderLen || ihl > len(pkt) {
		return 0
	}
	if pkt[9] == protoICMP && len(pkt) > ihl && isICMPv4Error(pkt[ihl]) {
		return 0 // never an error about an error (RFC 1122 3.2.2)
	}
	dst := netip.AddrFrom4([4]byte(pkt[12:16]))
	src, ok := snap.LocalAddr(false)
	if !ok || !dst.IsGlobalUnicast() {
		return 0
	}
	quote := min(len(pkt), icmpv4Quote)
	total := encap.IPv4HeaderLen + icmpHeaderLen + quote
	b := w.buf[encap.Headroom : encap.Headroom+total]
	ip := b[:encap.IPv4HeaderLen]
	ip[0] = 0x45
	ip[1] = 0xc0 // precedence: internetwork control, as Linux sends ICMP
	binary.BigEndian.PutUint16(ip[2:4], uint16(total))
	binary.BigEndian.PutUint32(ip[4:8], 0) // id 0, no flags
	ip[8] = 64                             // TTL
	ip[9] = protoICMP
	ip[10], ip[11] = 0, 0
	s4 := src.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], pkt[12:16])
	binary.BigEndian.PutUint16(ip[10:12], ^checksum(ip, 0))
	ic := b[encap.IPv4HeaderLen:]
	ic[0], ic[1] = icmpDestUnreachable, icmpFragNeeded
	ic[2], ic[3] = 0, 0
	binary.BigEndian.PutUint16(ic[4:6], 0)               // unused
	binary.BigEndian.PutUint16(ic[6:8], uint16(w.t.mtu)) // next-hop MTU (RFC 1191)
	copy(ic[icmpHeaderLen:], pkt[:quote])
	binary.BigEndian.PutUint16(ic[2:4], ^checksum(ic, 0))
	return total
}

func isICMPv4Error(typ byte) bool {
	switch typ {
	case 3, 4, 5, 11, 12: // unreachable, source quench, redirect, time exceeded, parameter problem
		return true
	}
	return false
}

// packetTooBig builds the ICMPv6 answer, or returns 0.
func (w *icmpWriter) packetTooBig(snap *routes.Snapshot, pkt []byte) int {
	if pkt[6] == protoICMPv6 && len(pkt) > encap.IPv6HeaderLen && pkt[encap.IPv6HeaderLen] < 128 {
		return 0 // an ICMPv6 error message (RFC 4443 2.4(e))
	}
	dst := netip.AddrFrom16([16]byte(pkt[8:24]))
	src, ok := snap.LocalAddr(true)
	if !ok || dst.IsUnspecified() || dst.IsMulticast() {
		return 0
	}
	quote := min(len(pkt), icmpv6Quote)
	plen := icmpHeaderLen + quote
	total := encap.IPv6HeaderLen + plen
	b := w.buf[encap.Headroom : encap.Headroom+total]
	ip := b[:encap.IPv6HeaderLen]
	binary.BigEndian.PutUint32(ip[0:4], 6<<28)
	binary.BigEndian.PutUint16(ip[4:6], uint16(plen))
	ip[6] = protoICMPv6
	ip[7] = 64 // hop limit
	s16 := src.As16()
	copy(ip[8:24], s16[:])
	copy(ip[24:40], pkt[8:24])
	ic := b[encap.IPv6HeaderLen:]
	ic[0], ic[1] = icmpv6PacketTooBig, 0
	ic[2], ic[3] = 0, 0
	binary.BigEndian.PutUint32(ic[4:8], uint32(w.t.mtu))
	copy(ic[icmpHeaderLen:], pkt[:quote])
	// Pseudo-header: addresses, upper-layer length, next header.
	sum := checksumAdd(0, ip[8:40])
	sum += uint64(plen) + protoICMPv6
	binary.BigEndian.PutUint16(ic[2:4], ^checksum(ic, sum))
	return total
}

// checksum returns the folded Internet checksum (RFC 1071) of b, starting
// from the unfolded sum initial. The caller stores its complement.
func checksum(b []byte, initial uint64) uint16 {
	sum := checksumAdd(initial, b)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

func checksumAdd(sum uint64, b []byte) uint64 {
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	return sum
}
