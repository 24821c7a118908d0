package tunnel_test

import (
	"encoding/binary"
	"net/netip"
)

// Test packet builders. Checksums are computed, so packets are valid to a
// kernel as well as to the fakes.

func csum(b []byte, initial uint32) uint16 {
	sum := initial
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// ipv4 builds an IPv4 packet with protocol proto around payload.
func ipv4(src, dst string, proto byte, df bool, payload []byte) []byte {
	p := make([]byte, 20+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], 0x1234)
	if df {
		p[6] = 0x40
	}
	p[8] = 64
	p[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], csum(p[:20], 0))
	copy(p[20:], payload)
	return p
}

// udp4 builds an IPv4 UDP packet with size bytes of IP packet in all.
func udp4(src, dst string, sport, dport uint16, size int, df bool) []byte {
	u := make([]byte, size-20)
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	for i := 8; i < len(u); i++ {
		u[i] = byte(i)
	}
	p := ipv4(src, dst, 17, df, u)
	var ph uint32
	for i := 12; i < 20; i += 2 {
		ph += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	ph += 17 + uint32(len(u))
	binary.BigEndian.PutUint16(p[26:], csum(p[20:], ph))
	return p
}

// udp6 builds an IPv6 UDP packet of size bytes.
func udp6(src, dst string, sport, dport uint16, size int) []byte {
	p := make([]byte, size)
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(size-40))
	p[6] = 17
	p[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	u := p[40:]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	for i := 8; i < len(u); i++ {
		u[i] = byte(i)
	}
	var ph uint32
	for i := 8; i < 40; i += 2 {
		ph += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	ph += 17 + uint32(len(u))
	binary.BigEndian.PutUint16(u[6:], csum(u, ph))
	return p
}
