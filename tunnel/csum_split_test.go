package tunnel

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"testing"
)

// checksumSplit is the previous checksumFast, kept for the benchmark: 32
// bytes a step into four accumulators, each 64-bit word split in 32-bit
// halves so no carry is lost.
func checksumSplit(initial uint64, b []byte) uint64 {
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
		sum += uint64(b[0])
	}
	return initial + uint64(bits.ReverseBytes16(fold(sum)))
}

func fold32(sum uint64) uint32 {
	sum = sum>>32 + sum&0xffffffff
	sum = sum>>32 + sum&0xffffffff
	return uint32(sum)
}

// equalSum reports whether two folded one's complement sums are equal, 0
// and 0xffff being the two zeros.
func equalSum(a, b uint16) bool {
	return a == b || a == 0 && b == 0xffff || a == 0xffff && b == 0
}

// FuzzChecksum checks checksumFast against the byte-at-a-time reference,
// for any bytes, any initial sum, and any split point (the segmenters chain
// calls).
func FuzzChecksum(f *testing.F) {
	f.Add([]byte{}, uint16(0), 0)
	f.Add([]byte{0xff}, uint16(0xffff), 0)
	f.Add(make([]byte, 1500), uint16(1), 700)
	ones := make([]byte, 257)
	for i := range ones {
		ones[i] = 0xff
	}
	f.Add(ones, uint16(0xfffe), 64)
	f.Fuzz(func(t *testing.T, b []byte, initial uint16, split int) {
		want := fold(uint64(slowChecksum(b)) + uint64(initial))
		if got := fold(checksumFast(uint64(initial), b)); !equalSum(got, want) {
			t.Fatalf("len %d, initial %#04x: checksumFast %#04x, reference %#04x", len(b), initial, got, want)
		}
		if split < 0 {
			split = -split
		}
		if len(b) > 0 {
			split = split % len(b) &^ 1 // the first part must be of even length
		} else {
			split = 0
		}
		if got := fold(checksumFast(checksumFast(uint64(initial), b[:split]), b[split:])); !equalSum(got, want) {
			t.Fatalf("len %d split at %d: %#04x, reference %#04x", len(b), split, got, want)
		}
	})
}

// BenchmarkChecksum compares checksumFast (impl=adc) with the previous
// version (impl=split) across packet sizes; compare them with
// benchstat -col /impl.
func BenchmarkChecksum(b *testing.B) {
	for _, size := range []int{20, 64, 576, 1400, 9000, 65535} {
		buf := make([]byte, size)
		for i := range buf {
			buf[i] = byte(i*7 + 3)
		}
		for _, impl := range []struct {
			name string
			fn   func(uint64, []byte) uint64
		}{{"split", checksumSplit}, {"adc", checksumFast}} {
			b.Run(fmt.Sprintf("size=%d/impl=%s", size, impl.name), func(b *testing.B) {
				b.SetBytes(int64(size))
				b.ReportAllocs()
				var s uint64
				for b.Loop() {
					s += impl.fn(0, buf)
				}
				sink = s
			})
		}
	}
}

var sink uint64
