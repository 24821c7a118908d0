package encap

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// tcp4 builds an IPv4 TCP segment with the given ports and a payload.
func tcp4(src, dst netip.Addr, sport, dport uint16, payload string) []byte {
	tcp := make([]byte, 20, 20+len(payload))
	binary.BigEndian.PutUint16(tcp[0:2], sport)
	binary.BigEndian.PutUint16(tcp[2:4], dport)
	tcp[12] = 5 << 4
	return buildIPv4(src, dst, protoTCP, append(tcp, payload...))
}

func udp6(src, dst netip.Addr, flowLabel uint32, sport, dport uint16, payload string) []byte {
	udp := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:2], sport)
	binary.BigEndian.PutUint16(udp[2:4], dport)
	binary.BigEndian.PutUint16(udp[4:6], uint16(8+len(payload)))
	return buildIPv6(src, dst, flowLabel, protoUDP, append(udp, payload...))
}

// TestFlowHashSameFlow: packets of one flow differ in everything but the
// flow fields (TTL, ID, checksum, sequence numbers, payload, length) and must
// still map to one source port, call after call.
func TestFlowHashSameFlow(t *testing.T) {
	a := tcp4(pod1, pod2, 40000, 80, "GET / HTTP/1.1\r\n")
	b := tcp4(pod1, pod2, 40000, 80, "a different and longer payload")
	b[4], b[5], b[8] = 0x12, 0x34, 3                            // IP ID, TTL
	binary.BigEndian.PutUint32(b[IPv4HeaderLen+4:], 0xdeadbeef) // TCP sequence
	binary.BigEndian.PutUint16(b[10:12], 0)                     // stale checksum
	c := udp6(pod1v6, pod2v6, 0xabcde, 5353, 53, "query")
	d := udp6(pod1v6, pod2v6, 0xabcde, 5353, 53, "another query, longer")
	d[7] = 1 // hop limit
	for _, pair := range [][2][]byte{{a, b}, {c, d}} {
		p0 := SourcePort(pair[0], SourcePortMin, SourcePortMax)
		for range 3 {
			if p := SourcePort(pair[1], SourcePortMin, SourcePortMax); p != p0 {
				t.Fatalf("one flow got source ports %d and %d", p0, p)
			}
			if FlowHash(pair[0]) != FlowHash(pair[1]) {
				t.Fatal("one flow got two hashes")
			}
		}
	}
}

// TestFlowHashFields: each flow field on its own changes the hash.
func TestFlowHashFields(t *testing.T) {
	base := tcp4(pod1, pod2, 40000, 80, "x")
	other := netip.MustParseAddr("10.244.83.3")
	udp := bytes.Clone(base)
	udp[9] = protoUDP
	variants := map[string][]byte{
		"source address":      tcp4(other, pod2, 40000, 80, "x"),
		"destination address": tcp4(pod1, other, 40000, 80, "x"),
		"source port":         tcp4(pod1, pod2, 40001, 80, "x"),
		"destination port":    tcp4(pod1, pod2, 40000, 81, "x"),
		"protocol":            udp,
	}
	h := FlowHash(base)
	for name, v := range variants {
		if FlowHash(v) == h {
			t.Errorf("changing the %s does not change the hash", name)
		}
	}

	base6 := udp6(pod1v6, pod2v6, 1, 5353, 53, "q")
	h6 := FlowHash(base6)
	for name, v := range map[string][]byte{
		"flow label":          udp6(pod1v6, pod2v6, 2, 5353, 53, "q"),
		"source address":      udp6(netip.MustParseAddr("fc00:0:0:1e::3"), pod2v6, 1, 5353, 53, "q"),
		"destination address": udp6(pod1v6, netip.MustParseAddr("fd00:0:0:53::2"), 1, 5353, 53, "q"),
		"source port":         udp6(pod1v6, pod2v6, 1, 5354, 53, "q"),
		"destination port":    udp6(pod1v6, pod2v6, 1, 5353, 54, "q"),
	} {
		if FlowHash(v) == h6 {
			t.Errorf("IPv6: changing the %s does not change the hash", name)
		}
	}
}

// TestFlowHashNoPorts: protocols without ports, IPv4 fragments and IPv6
// extension headers hash on addresses and protocol only, so the bytes where
// ports would be do not matter.
func TestFlowHashNoPorts(t *testing.T) {
	first := tcp4(pod1, pod2, 40000, 80, "first fragment")
	binary.BigEndian.PutUint16(first[6:8], 0x2000) // MF, offset 0
	later := tcp4(pod1, pod2, 0x4142, 0x4344, "later fragment")
	binary.BigEndian.PutUint16(later[6:8], 185) // offset 1480, last
	middle := tcp4(pod1, pod2, 7, 9, "middle")
	binary.BigEndian.PutUint16(middle[6:8], 0x2000|185)
	whole := tcp4(pod1, pod2, 40000, 80, "first fragment")
	if FlowHash(first) != FlowHash(later) || FlowHash(first) != FlowHash(middle) {
		t.Error("fragments of one datagram hash differently")
	}
	if FlowHash(first) == FlowHash(whole) {
		t.Error("an unfragmented packet hashes without its ports")
	}
	df := bytes.Clone(whole)
	binary.BigEndian.PutUint16(df[6:8], 0x4000) // DF is not fragmentation
	if FlowHash(df) != FlowHash(whole) {
		t.Error("the DF bit changes the hash")
	}

	icmpA := buildIPv4(pod1, pod2, 1, []byte{8, 0, 1, 2, 3, 4, 5, 6})
	icmpB := buildIPv4(pod1, pod2, 1, []byte{0, 0, 9, 9, 9, 9, 9, 9})
	if FlowHash(icmpA) != FlowHash(icmpB) {
		t.Error("ICMP payload bytes change the hash")
	}

	frag6A := buildIPv6(pod1v6, pod2v6, 0, 44, []byte{17, 0, 0, 1, 0, 0, 0, 7, 1, 2, 3, 4})
	frag6B := buildIPv6(pod1v6, pod2v6, 0, 44, []byte{17, 0, 5, 0x89, 0, 0, 0, 7, 9, 9, 9, 9})
	if FlowHash(frag6A) != FlowHash(frag6B) {
		t.Error("IPv6 fragment header contents change the hash")
	}

	// Options: ports are found after a 24-byte IPv4 header.
	opt := func(sport uint16) []byte {
		p := buildIPv4(pod1, pod2, protoUDP, nil)
		p[0] = 0x46
		p = append(p, 1, 1, 1, 0) // NOP NOP NOP EOL
		p = binary.BigEndian.AppendUint16(p, sport)
		p = append(p, 0, 53, 0, 8, 0, 0)
		binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
		return p
	}
	if FlowHash(opt(1000)) == FlowHash(opt(1001)) {
		t.Error("ports after IPv4 options are not hashed")
	}
}

// TestSourcePortRange: the port is always inside [lo, hi], for any packet
// (garbage and truncated ones included) and any range.
func TestSourcePortRange(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ranges := [][2]uint16{
		{SourcePortMin, SourcePortMax}, {49152, 65535}, {0, 65535}, {0, 0},
		{65535, 65535}, {1000, 1001}, {5000, 4000}, {4789, 4789},
	}
	pkts := [][]byte{nil, {0x45}, {0x60, 0, 0}, icmp4Packet(), icmp6Packet()}
	for n := range 80 {
		for _, first := range []byte{0x45, 0x4f, 0x40, 0x60, 0x00, 0xff} {
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			if n > 0 {
				p[0] = first
			}
			pkts = append(pkts, p)
		}
	}
	for _, p := range pkts {
		for _, r := range ranges {
			lo, hi := r[0], r[1]
			got := SourcePort(p, lo, hi)
			if hi <= lo {
				if got != lo {
					t.Fatalf("SourcePort(%x, %d, %d) = %d, want %d", p, lo, hi, got, lo)
				}
				continue
			}
			if got < lo || got > hi {
				t.Fatalf("SourcePort(%x, %d, %d) = %d, outside the range", p, lo, hi, got)
			}
		}
	}
	// The full range reaches both ends for suitable hashes: the mapping is
	// onto, checked on the function that does the mapping.
	lo, hi := false, false
	for i := range 1 << 16 {
		p := tcp4(pod1, pod2, uint16(i), 80, "")
		switch SourcePort(p, 1000, 1003) {
		case 1000:
			lo = true
		case 1003:
			hi = true
		}
	}
	if !lo || !hi {
		t.Errorf("a 4-port range never yields its ends (lo %v, hi %v)", lo, hi)
	}
}

// TestSourcePortSpread: 10,000 random flows fill the default range evenly.
// The bounds are loose (the chi-square bound has p < 1e-6 for a uniform
// hash, and the run is deterministic), but a constant or badly biased
// function fails both.
func TestSourcePortSpread(t *testing.T) {
	const flows, buckets = 10000, 64
	rng := rand.New(rand.NewPCG(7, 8))
	seq := 0
	randomAddr := func() netip.Addr {
		return netip.AddrFrom4([4]byte{10, 244, byte(rng.Uint32()), byte(rng.Uint32())})
	}
	for _, c := range []struct {
		name string
		gen  func() []byte
	}{
		{"random IPv4 TCP 5-tuples", func() []byte {
			return tcp4(randomAddr(), randomAddr(), uint16(rng.Uint32()), uint16(rng.Uint32()), "")
		}},
		// One pod pair, many connections: only the source port varies,
		// through 10,000 consecutive ephemeral ports.
		{"one pod pair, consecutive ports", func() []byte {
			seq++
			return tcp4(pod1, pod2, uint16(32768+seq), 443, "")
		}},
		{"IPv6 flow labels only", func() []byte {
			return buildIPv6(pod1v6, pod2v6, rng.Uint32(), 58, []byte{128, 0, 0, 0})
		}},
		{"ICMP between random pods", func() []byte {
			return buildIPv4(randomAddr(), randomAddr(), 1, []byte{8, 0, 0, 0})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var count [buckets]int
			distinct := map[uint16]bool{}
			const span = SourcePortMax - SourcePortMin + 1
			for range flows {
				p := SourcePort(c.gen(), SourcePortMin, SourcePortMax)
				count[(int(p)-SourcePortMin)*buckets/span]++
				distinct[p] = true
			}
			expected := float64(flows) / buckets
			var chi2 float64
			for _, n := range count {
				d := float64(n) - expected
				chi2 += d * d / expected
			}
			// 63 degrees of freedom: mean 63, sd 11.2; 130 is p ~ 1e-6.
			if chi2 > 130 {
				t.Errorf("chi-square over %d buckets = %.1f, want < 130 (counts %v)", buckets, chi2, count)
			}
			// Expected distinct ports for 10,000 uniform draws from 28,232:
			// 28232 * (1 - e^(-10000/28232)) = 8418.
			if len(distinct) < 7800 {
				t.Errorf("%d distinct ports for %d flows, want >= 7800", len(distinct), flows)
			}
			t.Logf("chi-square %.1f, %d distinct ports", chi2, len(distinct))
		})
	}
}
