package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"overlay/e2e/cluster"
)

// markerPort is the inner UDP port of every packet these tests craft, and
// markerPrefix starts its payload, so a capture in a pod can tell them
// from the pod traffic around them.
const (
	markerPort   = 9999
	markerPrefix = "ovl-"
)

// udpMarker builds an IPv4 UDP packet to dst's markerPort carrying
// markerPrefix+tag, with valid IP and UDP checksums.
func udpMarker(src, dst netip.Addr, tag string) []byte {
	payload := []byte(markerPrefix + tag)
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], markerPort)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	ip := make([]byte, 20, 20+len(u))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(u)))
	ip[8] = 64
	ip[9] = 17
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	// UDP checksum over the pseudo-header and the datagram.
	pseudo := append(append(append([]byte{}, ip[12:20]...), 0, 17, byte(len(u)>>8), byte(len(u))), u...)
	binary.BigEndian.PutUint16(u[6:], checksum(pseudo))
	return append(ip, u...)
}

// markerTag returns the tag of a captured marker packet, or "" for any
// other packet.
func markerTag(pkt []byte) string {
	if len(pkt) < 20 || pkt[0]>>4 != 4 || pkt[9] != 17 {
		return ""
	}
	ihl := int(pkt[0]&0x0f) * 4
	if len(pkt) < ihl+8 || binary.BigEndian.Uint16(pkt[ihl+2:]) != markerPort {
		return ""
	}
	tag, ok := bytes.CutPrefix(pkt[ihl+8:], []byte(markerPrefix))
	if !ok {
		return ""
	}
	return string(tag)
}

func isMarker(pkt []byte) bool { return markerTag(pkt) != "" }

// sourceDrops returns an agent's rx unknown_source and spoofed_source
// counters.
func sourceDrops(t *testing.T, ctx context.Context, n *cluster.Node) (unknown, spoofed uint64, st cluster.AgentStatus) {
	t.Helper()
	st, err := n.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st.Drops["rx"]["unknown_source"], st.Drops["rx"]["spoofed_source"], st
}

// unleasedAddr returns an address of the cluster network that no node's
// subnet holds.
func unleasedAddr(t *testing.T, nodes ...*cluster.Node) netip.Addr {
	t.Helper()
	for x := 250; x > 0; x-- {
		a := netip.AddrFrom4([4]byte{10, 244, byte(x), 9})
		free := true
		for _, n := range nodes {
			free = free && !n.Subnet().Contains(a)
		}
		if free {
			return a
		}
	}
	t.Fatal("no free subnet")
	return netip.Addr{}
}

var ttlExceededRE = regexp.MustCompile(`From (\S+) icmp_seq=\d+ Time to live exceeded`)

// TestSourceChecks (issue 16): with the source checks on, as they are by
// default, pod traffic in a mixed cluster, ICMP errors from routers in the
// pod network and masqueraded traffic keep working; a host on the
// underlay that holds no lease, sending well-formed VXLAN frames with
// crafted inner and forged outer sources, gets none of them into a pod
// while pod-to-pod traffic goes on without loss, whereas a kernel flannel
// node lets them all in; and a peer whose lease is deleted is refused from
// the watch event on.
func TestSourceChecks(t *testing.T) {
	requireAgent(t)
	c := newCluster(t, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// n1 masquerades (--ip-masq), as kube-flannel's default deployment
	// does; n2 and n4 do not.
	n1, err := c.AddNode(ctx, cluster.NodeOptions{Kind: cluster.Agent, Args: []string{"--ip-masq"}})
	if err != nil {
		t.Fatalf("add n1: %v", err)
	}
	rest := addNodes(t, ctx, c, cluster.Agent, cluster.KernelFlannel, cluster.Agent)
	n2, k3, n4 := rest[0], rest[1], rest[2]
	agents := []*cluster.Node{n1, n2, n4}
	rogue, err := c.AddHost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("nodes: n1 %v (ip-masq), n2 %v, kernel k3 %v, n4 %v; rogue host %v", n1.Subnet(), n2.Subnet(), k3.Subnet(), n4.Subnet(), rogue.Underlay)
	pingAll(t, ctx, c.Pods(), 20*time.Second)

	t.Run("mixed cluster", func(t *testing.T) {
		transferPairs(t, ctx, "",
			[2]*cluster.Pod{n1.Pods[0], k3.Pods[0]}, [2]*cluster.Pod{k3.Pods[1], n2.Pods[1]},
			[2]*cluster.Pod{n2.Pods[0], n4.Pods[0]}, [2]*cluster.Pod{n4.Pods[1], n1.Pods[1]})
		for _, a := range agents {
			unknown, spoofed, st := sourceDrops(t, ctx, a)
			if st.SourceCheck != "strict" {
				t.Errorf("%s: source check %q, want strict by default", a.Name, st.SourceCheck)
			}
			if unknown != 0 || spoofed != 0 {
				t.Errorf("%s refused pod traffic: unknown_source %d, spoofed_source %d", a.Name, unknown, spoofed)
			}
		}
	})

	t.Run("ICMP errors from routers", func(t *testing.T) {
		// TTL 2 expires at the second router, the destination's node,
		// which answers "time exceeded" from its overlay address, back
		// through the overlay to the sender's node.
		for _, pair := range [][2]*cluster.Pod{{n1.Pods[0], n2.Pods[0]}, {n2.Pods[1], k3.Pods[0]}, {k3.Pods[1], n4.Pods[0]}} {
			src, dst := pair[0], pair[1]
			r, err := src.Ping(ctx, dst.Addr, cluster.PingOptions{Count: 2, TTL: 2})
			if err != nil {
				t.Fatal(err)
			}
			m := ttlExceededRE.FindStringSubmatch(r.Output)
			if m == nil {
				t.Errorf("%s -> %s with TTL 2: no time exceeded:\n%s", src, dst, r.Output)
				continue
			}
			from, err := netip.ParseAddr(m[1])
			if err != nil || !dst.Node.Subnet().Contains(from) {
				t.Errorf("%s -> %s with TTL 2: time exceeded from %s, want an address of %s's subnet %v", src, dst, m[1], dst.Node.Name, dst.Node.Subnet())
				continue
			}
			t.Logf("%s -> %s with TTL 2: time exceeded from %v (%s, %v)", src, dst, from, dst.Node.Name, dst.Node.Kind)
		}
		for _, a := range agents {
			if unknown, spoofed, _ := sourceDrops(t, ctx, a); unknown != 0 || spoofed != 0 {
				t.Errorf("%s refused ICMP errors: unknown_source %d, spoofed_source %d", a.Name, unknown, spoofed)
			}
		}
	})

	t.Run("rogue sender", func(t *testing.T) {
		testRogueSender(t, ctx, rogue, n1, n2, k3, n4)
	})

	t.Run("ip-masq", func(t *testing.T) {
		testMasquerade(t, ctx, c, n1, n2, n4)
	})

	t.Run("peer leaves", func(t *testing.T) {
		testPeerLeaves(t, ctx, c, n1, n4)
	})
}

// testRogueSender: the rogue host sends five kinds of crafted frames to
// the agent n2 and, as the control, to the kernel flannel node k3, while
// a TCP transfer and a ping stream run into n2's pod.
func testRogueSender(t *testing.T, ctx context.Context, rogue *cluster.Host, n1, n2, k3, n4 *cluster.Node) {
	const rounds = 50
	nonPeer := netip.MustParseAddr("172.30.250.77") // no node, no host
	unleased := unleasedAddr(t, n1, n2, k3, n4)
	type kind struct {
		name   string
		outer  netip.Addr // the outer source; forged unless the rogue's own
		inner  func(target *cluster.Node) netip.Addr
		reason string // n2's drop reason
	}
	kinds := []kind{
		{"valid-looking: a peer's pod as source", rogue.Underlay, func(*cluster.Node) netip.Addr { return n1.Pods[0].Addr }, "unknown_source"},
		{"spoofed inner source no lease holds", rogue.Underlay, func(*cluster.Node) netip.Addr { return unleased }, "unknown_source"},
		{"forged outer source of no peer", nonPeer, func(*cluster.Node) netip.Addr { return n1.Pods[0].Addr }, "unknown_source"},
		{"forged outer source of peer n1, a pod of n4 as source", n1.Underlay, func(*cluster.Node) netip.Addr { return n4.Pods[0].Addr }, "spoofed_source"},
		{"forged outer source of peer n1, the target's own pod as source", n1.Underlay, func(tg *cluster.Node) netip.Addr { return tg.Pods[1].Addr }, "spoofed_source"},
	}
	targets := []*cluster.Node{n2, k3}
	var caps []*cluster.Capture
	for _, tg := range targets {
		cp, err := tg.Pods[0].Capture(isMarker)
		if err != nil {
			t.Fatal(err)
		}
		caps = append(caps, cp)
	}
	defer func() {
		for _, cp := range caps {
			cp.Stop()
		}
	}()
	before, err := n2.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Pod traffic into the target pod the whole time.
	var wg sync.WaitGroup
	var transfer cluster.TransferResult
	var transferErr, pingErr error
	var ping cluster.PingResult
	wg.Go(func() {
		transfer, transferErr = cluster.Transfer(ctx, n1.Pods[1], n2.Pods[0], 4<<30, cluster.TransferOptions{Duration: 3 * time.Second})
	})
	wg.Go(func() {
		ping, pingErr = k3.Pods[1].Ping(ctx, n2.Pods[0].Addr, cluster.PingOptions{Count: 120, Interval: 20 * time.Millisecond, Wait: time.Second})
	})

	// The rogue's frames: rounds of one frame of every kind to each target.
	var sendErr error
	wg.Go(func() {
		time.Sleep(300 * time.Millisecond)
		for round := range rounds {
			for _, tg := range targets {
				dst := netip.AddrPortFrom(tg.Underlay, cluster.VXLANPort)
				for i, k := range kinds {
					inner := udpMarker(k.inner(tg), tg.Pods[0].Addr, fmt.Sprintf("rogue:%d:%d", i, round))
					frame := [][]byte{vxlanFrame(1, tg.VtepMAC(), n1.VtepMAC(), inner)}
					src := netip.AddrPortFrom(k.outer, uint16(40000+i))
					var err error
					if k.outer == rogue.Underlay {
						err = rogue.NS.SendUDP(ctx, src, dst, frame)
					} else {
						err = rogue.NS.SendRawUDP(ctx, src, dst, frame)
					}
					if err != nil {
						sendErr = err
						return
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	wg.Wait()
	if sendErr != nil {
		t.Fatalf("rogue send: %v", sendErr)
	}
	if transferErr != nil {
		t.Errorf("transfer into the target pod while the rogue sent: %v", transferErr)
	} else {
		t.Logf("transfer %s -> %s during the rogue's frames: %d bytes, %.0f Mbit/s, sha256 ok", n1.Pods[1], n2.Pods[0], transfer.Bytes, transfer.Mbps())
	}
	if pingErr != nil || !ping.OK() {
		t.Errorf("ping %s -> %s during the rogue's frames: %d of %d replies (%v)\n%s", k3.Pods[1], n2.Pods[0], ping.Received, ping.Transmitted, pingErr, ping.Output)
	} else {
		t.Logf("ping %s -> %s during the rogue's frames: %d of %d replies", k3.Pods[1], n2.Pods[0], ping.Received, ping.Transmitted)
	}

	// The control that the capture works: a real pod sends markers too.
	pc, err := n1.Pods[0].NS.ListenPacket("udp4", netip.AddrPortFrom(n1.Pods[0].Addr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := pc.WriteTo([]byte(markerPrefix+"legit:"+strconv.Itoa(i)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(n2.Pods[0].Addr, markerPort))); err != nil {
			t.Fatal(err)
		}
	}
	pc.Close()
	waitFor(t, ctx, 5*time.Second, "the legitimate markers in the target pod's capture", func() bool {
		for _, p := range caps[0].Packets() {
			if strings.HasPrefix(markerTag(p), "legit:") {
				return true
			}
		}
		return false
	})

	// Counters settle once the last frame is handled.
	var after cluster.AgentStatus
	wantUnknown, wantSpoofed := uint64(0), uint64(0)
	for _, k := range kinds {
		if k.reason == "unknown_source" {
			wantUnknown += rounds
		} else {
			wantSpoofed += rounds
		}
	}
	waitFor(t, ctx, 10*time.Second, "n2's source drop counters", func() bool {
		if after, err = n2.Status(ctx); err != nil {
			return false
		}
		return after.Drops["rx"]["unknown_source"]-before.Drops["rx"]["unknown_source"] >= wantUnknown &&
			after.Drops["rx"]["spoofed_source"]-before.Drops["rx"]["spoofed_source"] >= wantSpoofed
	})
	time.Sleep(200 * time.Millisecond)
	if after, err = n2.Status(ctx); err != nil {
		t.Fatal(err)
	}
	// Exactly the rogue's frames were refused, and nothing else was
	// dropped: the pod traffic around them lost nothing.
	for reason, n := range after.Drops["rx"] {
		d := n - before.Drops["rx"][reason]
		want := map[string]uint64{"unknown_source": wantUnknown, "spoofed_source": wantSpoofed}[reason]
		if d != want {
			t.Errorf("n2 rx drops %s rose by %d, want %d", reason, d, want)
		}
	}
	t.Logf("n2 refused: %s", dropDiff(before, after))

	for i, tg := range targets {
		pkts, err := caps[i].Stop()
		if err != nil {
			t.Errorf("capture in %s: %v", tg.Pods[0], err)
		}
		got := make([]int, len(kinds))
		legit := 0
		for _, p := range pkts {
			tag := markerTag(p)
			if strings.HasPrefix(tag, "legit:") {
				legit++
				continue
			}
			var k, round int
			if _, err := fmt.Sscanf(tag, "rogue:%d:%d", &k, &round); err == nil && k < len(kinds) {
				got[k]++
			}
		}
		switch tg.Kind {
		case cluster.Agent:
			for k, n := range got {
				if n != 0 {
					t.Errorf("%d of the rogue's frames (%s) reached pod %s behind the agent", n, kinds[k].name, tg.Pods[0])
				}
			}
			if legit == 0 {
				t.Errorf("the capture in %s saw no legitimate marker: it proves nothing", tg.Pods[0])
			}
			t.Logf("pod %s behind agent %s: rogue frames by kind %v, legitimate markers %d", tg.Pods[0], tg.Name, got, legit)
		case cluster.KernelFlannel:
			// Kernel VXLAN takes any well-formed frame: the hole the checks
			// close, and the proof that the rogue's frames are well formed.
			for k, n := range got {
				if n == 0 {
					t.Errorf("none of the rogue's frames (%s) reached pod %s behind kernel VXLAN: are they well formed?", kinds[k].name, tg.Pods[0])
				}
			}
			t.Logf("pod %s behind kernel flannel %s: rogue frames by kind %v of %d each", tg.Pods[0], tg.Name, got, rounds)
		}
	}

	// Both counters in /metrics and in `overlay status`.
	m, err := n2.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, reason := range []string{"unknown_source", "spoofed_source"} {
		if got, want := m.Sum("overlay_drops_total", `direction="rx"`, `reason="`+reason+`"`), float64(after.Drops["rx"][reason]); got != want {
			t.Errorf("/metrics overlay_drops_total{direction=\"rx\",reason=%q} = %v, want %v", reason, got, want)
		}
	}
	out, err := n2.NS.Run(ctx, overlayBin, "status", "--healthz-port", strconv.Itoa(cluster.HealthzPort))
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("strict, refused: unknown_source %d, spoofed_source %d", after.Drops["rx"]["unknown_source"], after.Drops["rx"]["spoofed_source"])
	if !strings.Contains(string(out), want) {
		t.Errorf("overlay status lacks %q:\n%s", want, out)
	}
}

// testMasquerade routes the hub's traffic to n2's pods through a node: it
// arrives from outside the cluster network. Through n1, which masquerades
// it to its overlay address as flannel's ip-masq rules do, it passes n2's
// check; through n4, which does not masquerade, its source lies in no
// subnet and n2 refuses it.
func testMasquerade(t *testing.T, ctx context.Context, c *cluster.Cluster, n1, n2, n4 *cluster.Node) {
	dst := n2.Pods[0]
	route := func(via netip.Addr) {
		t.Helper()
		if _, err := c.Hub().Run(ctx, "ip", "route", "replace", n2.Subnet().String(), "via", via.String()); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _, _ = c.Hub().Run(context.Background(), "ip", "route", "del", n2.Subnet().String()) })
	hubPing := func(count int) cluster.PingResult {
		t.Helper()
		out, _ := c.Hub().Command(ctx, "ping", "-n", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "1", dst.Addr.String()).CombinedOutput()
		r, err := cluster.ParsePing(string(out))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	isEcho := func(p []byte) bool { return len(p) >= 28 && p[0] == 0x45 && p[9] == 1 && p[20] == 8 }

	route(n1.Underlay)
	cp, err := dst.Capture(isEcho)
	if err != nil {
		t.Fatal(err)
	}
	r := hubPing(3)
	pkts, _ := cp.Stop()
	if !r.OK() {
		t.Errorf("hub -> %s through n1 (ip-masq): %d of %d replies\n%s", dst, r.Received, r.Transmitted, r.Output)
	}
	for _, p := range pkts {
		if src := netip.AddrFrom4([4]byte(p[12:16])); src != n1.Subnet().Addr() {
			t.Errorf("echo request from the hub reached %s from %v, want n1's overlay address %v (masqueraded)", dst, src, n1.Subnet().Addr())
		}
	}
	t.Logf("hub -> %s through n1 (ip-masq): %d of %d replies, %d echo requests seen in the pod, from %v", dst, r.Received, r.Transmitted, len(pkts), n1.Subnet().Addr())

	_, before, _ := sourceDrops(t, ctx, n2)
	route(n4.Underlay)
	r = hubPing(3)
	if r.Received != 0 {
		t.Errorf("hub -> %s through n4 (no ip-masq): %d replies, want none: n2 must refuse a source outside every subnet", dst, r.Received)
	}
	waitFor(t, ctx, 5*time.Second, "n2 counting the unmasqueraded requests", func() bool {
		_, after, _ := sourceDrops(t, ctx, n2)
		return after-before >= uint64(r.Transmitted)
	})
	_, after, _ := sourceDrops(t, ctx, n2)
	t.Logf("hub -> %s through n4 (no ip-masq): %d of %d replies; n2 spoofed_source +%d", dst, r.Received, r.Transmitted, after-before)
}

// testPeerLeaves: n4 stops, and from its namespace (its underlay address)
// frames keep coming to n1's pod with an inner source in n4's subnet.
// While n4's lease exists n1 lets them in; once the lease is deleted n1
// refuses them, from the watch event on.
func testPeerLeaves(t *testing.T, ctx context.Context, c *cluster.Cluster, n1, n4 *cluster.Node) {
	const (
		interval  = 5 * time.Millisecond
		maxProbes = 3000
	)
	if err := n4.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	target := n1.Pods[0]
	cp, err := target.Capture(func(p []byte) bool { return strings.HasPrefix(markerTag(p), "leave:") })
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Stop()
	pc, err := n4.NS.ListenPacket("udp4", netip.AddrPortFrom(n4.Underlay, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(n1.Underlay, cluster.VXLANPort))
	sentAt := make([]time.Time, 0, maxProbes)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sendErr error
	wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for seq := 0; seq < maxProbes; seq++ {
			inner := udpMarker(n4.Pods[0].Addr, target.Addr, fmt.Sprintf("leave:%d", seq))
			sentAt = append(sentAt, time.Now())
			if _, err := pc.WriteTo(vxlanFrame(1, n1.VtepMAC(), n4.VtepMAC(), inner), to); err != nil {
				sendErr = err
				return
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	stopProbes := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}
	defer stopProbes()

	waitFor(t, ctx, 5*time.Second, "n4's frames reaching n1's pod while its lease exists", func() bool { return len(cp.Packets()) >= 10 })
	before, _, _ := sourceDrops(t, ctx, n1)
	key := cluster.SubnetKey(c.EtcdPrefix(), n4.Subnet())
	deleteAt := time.Now()
	if _, err := c.Etcd().Delete(ctx, key); err != nil {
		t.Fatalf("delete %s: %v", key, err)
	}
	deleted := time.Now()
	waitFor(t, ctx, 10*time.Second, "n1 refusing n4's frames", func() bool {
		u, _, _ := sourceDrops(t, ctx, n1)
		return u > before
	})
	time.Sleep(200 * time.Millisecond)
	stopProbes()
	if sendErr != nil {
		t.Fatal(sendErr)
	}
	time.Sleep(100 * time.Millisecond)
	pkts, err := cp.Stop()
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]bool{}
	last := -1
	for _, p := range pkts {
		seq, err := strconv.Atoi(strings.TrimPrefix(markerTag(p), "leave:"))
		if err != nil {
			t.Fatalf("marker %q", markerTag(p))
		}
		got[seq] = true
		last = max(last, seq)
	}
	sent := len(sentAt)
	// Accepted up to the event, refused from it on: no gap before, no
	// straggler after, and every refused frame counted.
	for seq := 0; seq <= last; seq++ {
		if !got[seq] {
			t.Errorf("probe %d of n4 (sent before probe %d was accepted) was lost", seq, last)
		}
	}
	if last+1 >= sent {
		t.Fatalf("all %d probes accepted after the delete", sent)
	}
	after, _, st := sourceDrops(t, ctx, n1)
	if refused := after - before; refused != uint64(sent-last-1) {
		t.Errorf("n1 counted %d unknown_source drops, want the %d probes not delivered", refused, sent-last-1)
	}
	if _, ok := st.Peer(n4.Subnet()); ok {
		t.Errorf("n1 still lists n4 %v as a peer", n4.Subnet())
	}
	t.Logf("n4's lease deleted (etcd delete took %v): the last probe accepted was sent %v after the delete began, the first refused %v after; %d probes, %d refused",
		deleted.Sub(deleteAt).Round(100*time.Microsecond), sentAt[last].Sub(deleteAt).Round(100*time.Microsecond),
		sentAt[last+1].Sub(deleteAt).Round(100*time.Microsecond), sent, sent-last-1)
}
