package encap

import (
	"strconv"
	"testing"
)

// benchPackets are the inner packets the benchmarks use: a small ICMP echo
// and a full 1450-byte TCP segment (the flannel overlay MTU), over both IP
// versions. Encap and Decap cost the same for every size (they touch only
// the headers); SetBytes makes the MB/s column comparable with throughput.
func benchPackets() []struct {
	name string
	pkt  []byte
} {
	big4 := tcp4(pod1, pod2, 40000, 5201, string(make([]byte, 1500-OverheadIPv4-IPv4HeaderLen-20)))
	big6 := udp6(pod1v6, pod2v6, 0x12345, 40000, 5201, string(make([]byte, 1500-OverheadIPv4-IPv6HeaderLen-8)))
	return []struct {
		name string
		pkt  []byte
	}{
		{"ipv4-" + strconv.Itoa(len(icmp4Packet())), icmp4Packet()},
		{"ipv4-" + strconv.Itoa(len(big4)), big4},
		{"ipv6-" + strconv.Itoa(len(big6)), big6},
	}
}

func BenchmarkEncap(b *testing.B) {
	for _, c := range benchPackets() {
		b.Run(c.name, func(b *testing.B) {
			buf := make([]byte, Headroom+len(c.pkt))
			copy(buf[Headroom:], c.pkt)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				if err := Encap(buf, 1, macNodeB, macNodeA); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecap(b *testing.B) {
	for _, c := range benchPackets() {
		b.Run(c.name, func(b *testing.B) {
			frame := frameFor(b, c.pkt, 1, macNodeB, macNodeA)
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Decap(frame, 1, macNodeB); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecapReject measures the drop path (a frame for another VNI).
func BenchmarkDecapReject(b *testing.B) {
	frame := frameFor(b, icmp4Packet(), 2, macNodeB, macNodeA)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decap(frame, 1, macNodeB); err != ErrWrongVNI {
			b.Fatal(err)
		}
	}
}

func BenchmarkFlowHash(b *testing.B) {
	for _, c := range benchPackets() {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.pkt)))
			b.ReportAllocs()
			var sink uint32
			for b.Loop() {
				sink += FlowHash(c.pkt)
			}
			_ = sink
		})
	}
}

func BenchmarkSourcePort(b *testing.B) {
	pkt := tcp4(pod1, pod2, 40000, 5201, "")
	b.ReportAllocs()
	var sink uint16
	for b.Loop() {
		sink += SourcePort(pkt, SourcePortMin, SourcePortMax)
	}
	_ = sink
}
