package e2e

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"overlay/e2e/cluster"
)

// Frames for the bad-input test, built by hand from RFC 7348 so the test
// does not trust the code it checks:
//
//	VXLAN header: flags (0x08 = I) | 3 reserved | VNI (3 bytes) | 1 reserved
//	inner Ethernet: dst MAC | src MAC | EtherType
//	inner IPv4 packet
const (
	vxlanHeaderLen = 8
	etherHeaderLen = 14
)

func vxlanFrame(vni uint32, dst, src net.HardwareAddr, inner []byte) []byte {
	b := make([]byte, vxlanHeaderLen+etherHeaderLen+len(inner))
	b[0] = 0x08
	b[4], b[5], b[6] = byte(vni>>16), byte(vni>>8), byte(vni)
	copy(b[8:14], dst)
	copy(b[14:20], src)
	binary.BigEndian.PutUint16(b[20:22], 0x0800)
	copy(b[22:], inner)
	return b
}

// icmpEcho builds an IPv4 ICMP echo request with valid checksums.
func icmpEcho(src, dst netip.Addr, seq uint16) []byte {
	icmp := make([]byte, 8+32)
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], 0x4242)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	ip := make([]byte, 20, 20+len(icmp))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
	ip[8] = 64
	ip[9] = 1 // ICMP
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	return append(ip, icmp...)
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// TestBadInput (issue #6, 8): random bytes, truncated frames, a wrong VNI
// and a wrong inner MAC sent to port 8472 of a node do not disturb pod
// traffic through it, and each kind shows up in the node's drop counters
// (in /status and in /metrics). They come from the other node's address,
// a peer's, so the source check lets them through to decapsulation
// (TestSourceChecks sends frames from elsewhere).
func TestBadInput(t *testing.T) {
	requireAgent(t)
	c := newCluster(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes := addNodes(t, ctx, c, cluster.Agent, cluster.Agent)
	n1, n2 := nodes[0], nodes[1]
	pingAll(t, ctx, c.Pods(), 20*time.Second)

	victim := n2
	target := netip.AddrPortFrom(victim.Underlay, cluster.VXLANPort)
	pod := victim.Pods[0]
	// A real packet to the victim's pod, from the other node's subnet,
	// so only the one broken field decides the frame's fate.
	inner := icmpEcho(n1.Pods[0].Addr, pod.Addr, 1)
	fakeMAC := net.HardwareAddr{0x02, 0xde, 0xad, 0xbe, 0xef, 0x01}
	rng := rand.New(rand.NewPCG(1, 2))
	const per = 100
	kinds := []struct {
		name   string
		frames func() [][]byte
	}{
		{"random bytes", func() [][]byte {
			var fs [][]byte
			for range per {
				b := make([]byte, 1+rng.IntN(1400))
				for i := range b {
					b[i] = byte(rng.Uint32())
				}
				b[0] &^= 0x08 // never a valid I flag by chance
				fs = append(fs, b)
			}
			return fs
		}},
		{"truncated frames", func() [][]byte {
			full := vxlanFrame(1, victim.VtepMAC(), fakeMAC, inner)
			var fs [][]byte
			for i := range per {
				// Cut inside the VXLAN header, the inner Ethernet header or
				// the inner IPv4 header.
				fs = append(fs, full[:1+i%(vxlanHeaderLen+etherHeaderLen+19)])
			}
			return fs
		}},
		{"wrong VNI", func() [][]byte {
			var fs [][]byte
			for i := range per {
				fs = append(fs, vxlanFrame(uint32(2+i), victim.VtepMAC(), fakeMAC, inner))
			}
			return fs
		}},
		{"wrong inner MAC", func() [][]byte {
			var fs [][]byte
			for range per {
				fs = append(fs, vxlanFrame(1, fakeMAC, n1.VtepMAC(), inner))
			}
			return fs
		}},
	}

	// Pod traffic through the victim runs the whole time.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var pingErrs []string
	var mu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			r, err := n1.Pods[1].Ping(ctx, pod.Addr, cluster.PingOptions{Count: 5, Interval: 50 * time.Millisecond})
			if err != nil || !r.OK() {
				mu.Lock()
				pingErrs = append(pingErrs, r.Output+" "+errString(err))
				mu.Unlock()
			}
		}
	}()

	before, err := victim.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range kinds {
		frames := k.frames()
		prev, err := victim.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := n1.NS.SendUDP(ctx, netip.AddrPortFrom(n1.Underlay, 0), target, frames); err != nil {
			t.Fatalf("%s: %v", k.name, err)
		}
		// Every datagram is dropped and counted.
		var now cluster.AgentStatus
		deadline := time.Now().Add(10 * time.Second)
		for {
			if now, err = victim.Status(ctx); err != nil {
				t.Fatal(err)
			}
			if rxDrops(now)-rxDrops(prev) >= uint64(len(frames)) || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if got := rxDrops(now) - rxDrops(prev); got < uint64(len(frames)) {
			t.Errorf("%s: %d datagrams sent, receive drops rose by %d: %v", k.name, len(frames), got, now.Drops)
		} else if src := now.Drops["rx"]["unknown_source"] + now.Drops["rx"]["spoofed_source"] - prev.Drops["rx"]["unknown_source"] - prev.Drops["rx"]["spoofed_source"]; src != 0 {
			t.Errorf("%s: %d datagrams from a peer refused by the source check, not decapsulation: %s", k.name, src, dropDiff(prev, now))
		} else {
			t.Logf("%s: %d datagrams sent, receive drops rose by %d: %s", k.name, len(frames), got, dropDiff(prev, now))
		}
		// The transfer through the victim is intact in the middle of it all.
		if _, err := cluster.Transfer(ctx, n1.Pods[0], pod, 4<<20, cluster.TransferOptions{}); err != nil {
			t.Errorf("transfer after %s: %v", k.name, err)
		}
	}
	close(stop)
	wg.Wait()
	for _, e := range pingErrs {
		t.Errorf("pod traffic disturbed by bad input: %s", e)
	}

	after, err := victim.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rxDrops(after)-rxDrops(before), uint64(len(kinds)*per); got < want {
		t.Errorf("status: receive drops rose by %d, want at least %d", got, want)
	}
	m, err := victim.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Sum("overlay_drops_total", `direction="rx"`); got < float64(len(kinds)*per) {
		t.Errorf("metrics: overlay_drops_total{direction=\"rx\"} = %v, want at least %d", got, len(kinds)*per)
	}
	if !victim.Running() {
		t.Errorf("%s's agent exited:\n%s", victim.Name, victim.LogTail(30))
	}
}

func rxDrops(st cluster.AgentStatus) uint64 {
	var n uint64
	for _, v := range st.Drops["rx"] {
		n += v
	}
	return n
}

func dropDiff(a, b cluster.AgentStatus) string {
	var parts []string
	for reason, v := range b.Drops["rx"] {
		if d := v - a.Drops["rx"][reason]; d > 0 {
			parts = append(parts, reason+"+"+strconv.FormatUint(d, 10))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
