package tunnel

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// slowChecksum is the RFC 1071 reference: 16-bit words, folded at the end.
func slowChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

func TestChecksumFastMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for n := range 300 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if n%7 == 0 {
			for i := range b {
				b[i] = 0xff // carries everywhere
			}
		}
		if got, want := fold(checksumFast(0, b)), slowChecksum(b); got != want && !(got == 0 && want == 0xffff || got == 0xffff && want == 0) {
			t.Fatalf("len %d: checksumFast %#04x, reference %#04x", n, got, want)
		}
	}
	// Long buffers (carries in every accumulator), odd lengths, and a
	// running sum carried in, as the segmenters chain calls.
	for _, n := range []int{1399, 4096, 65535, 65536 + 13} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32()) | 0xf0
		}
		head := b[:n/3&^1]
		want := slowChecksum(b)
		if got := fold(checksumFast(checksumFast(0, head), b[len(head):])); got != want {
			t.Fatalf("len %d in two calls: %#04x, reference %#04x", n, got, want)
		}
	}
}

// tcp4 builds an IPv4 TCP packet with a valid checksum.
func tcp4(payload int) []byte {
	p := make([]byte, 20+20+payload)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[6] = 0x40
	p[8], p[9] = 64, protoTCP
	copy(p[12:], []byte{10, 244, 2, 0, 10, 244, 1, 0})
	binary.BigEndian.PutUint16(p[10:], ^slowChecksum(p[:20]))
	l4 := p[20:]
	binary.BigEndian.PutUint16(l4[0:], 5001)
	binary.BigEndian.PutUint16(l4[2:], 40000)
	l4[12] = 5 << 4
	for i := 20; i < len(l4); i++ {
		l4[i] = byte(i * 7)
	}
	ph := append(append([]byte{}, p[12:20]...), 0, protoTCP, byte(len(l4)>>8), byte(len(l4)))
	binary.BigEndian.PutUint16(l4[16:], ^slowChecksum(append(ph, l4...)))
	return p
}

func TestFinishPartialChecksum(t *testing.T) {
	valid := tcp4(1000)
	want := binary.BigEndian.Uint16(valid[36:])

	pkt := append([]byte(nil), valid...)
	if finishPartialChecksum(pkt) || binary.BigEndian.Uint16(pkt[36:]) != want {
		t.Fatal("a complete checksum was changed")
	}
	// Make it partial, as the kernel leaves it for offload.
	l4len := len(pkt) - 20
	ph := append(append([]byte{}, pkt[12:20]...), 0, protoTCP, byte(l4len>>8), byte(l4len))
	binary.BigEndian.PutUint16(pkt[36:], slowChecksum(ph))
	if !finishPartialChecksum(pkt) {
		t.Fatal("partial checksum not recognised")
	}
	if got := binary.BigEndian.Uint16(pkt[36:]); got != want {
		t.Errorf("finished checksum %#04x, want %#04x", got, want)
	}
	// A corrupt checksum is left for the kernel to reject.
	bad := append([]byte(nil), valid...)
	bad[36] ^= 0x55
	if finishPartialChecksum(bad) {
		t.Error("a corrupt checksum was rewritten")
	}
}
