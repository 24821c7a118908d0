package tunnel_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"overlay/tunnel"
)

var loopback = netip.MustParseAddrPort("127.0.0.1:0")

func listen(t testing.TB, opts tunnel.UDPOptions) tunnel.Conn {
	t.Helper()
	if !opts.Addr.IsValid() {
		opts.Addr = loopback
	}
	opts.Logger = quietLogger()
	c, err := tunnel.ListenUDP(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// received is one datagram as a receiver saw it.
type received struct {
	data []byte
	src  netip.AddrPort
}

// readN reads until n datagrams have arrived, splitting GRO slots.
func readN(t testing.TB, c tunnel.Conn, n int) []received {
	t.Helper()
	msgs := make([]tunnel.ReadMessage, 8)
	for i := range msgs {
		msgs[i].Buf = make([]byte, 65535)
	}
	var out []received
	done := make(chan struct{})
	timer := time.AfterFunc(10*time.Second, func() {
		select {
		case <-done:
		default:
			c.Close() // unblock ReadBatch; the test fails below
		}
	})
	defer timer.Stop()
	defer close(done)
	for len(out) < n {
		k, err := c.ReadBatch(msgs)
		if err != nil {
			t.Fatalf("ReadBatch after %d of %d datagrams: %v", len(out), n, err)
		}
		for _, m := range msgs[:k] {
			if m.Truncated {
				t.Fatal("datagram truncated")
			}
			for off := 0; off < m.N; off += m.Segment {
				out = append(out, received{append([]byte(nil), m.Buf[off:min(off+m.Segment, m.N)]...), m.Addr})
			}
		}
	}
	return out
}

func payload(size int, tag byte) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = tag + byte(i)
	}
	return b
}

func TestConnBatchesOverLoopback(t *testing.T) {
	for _, mode := range []string{"offloads", "no-offloads", "naive"} {
		t.Run(mode, func(t *testing.T) {
			off := mode != "offloads"
			opts := tunnel.UDPOptions{DisableGSO: off, DisableGRO: off, Naive: mode == "naive"}
			if mode == "naive" {
				opts.DisableGSO, opts.DisableGRO = false, false // Naive alone must turn them off
			}
			b := listen(t, opts)
			opts.SourcePorts = 4
			a := listen(t, opts)
			if off && (a.GSO() || b.GRO()) {
				t.Fatalf("%s: GSO %v, GRO %v; want both off", mode, a.GSO(), b.GRO())
			}
			if !off {
				t.Logf("GSO %v, GRO %v", a.GSO(), b.GRO())
			}
			// Two flows; the first a GSO run of 10 equal frames and a short
			// tail, the second of mixed sizes (three runs).
			var f1, f2 [][]byte
			for i := range 10 {
				f1 = append(f1, payload(1000, byte(i)))
			}
			f1 = append(f1, payload(500, 99))
			f2 = [][]byte{payload(800, 1), payload(800, 2), payload(900, 3), payload(100, 4)}
			msgs := []tunnel.WriteMessage{
				{Frames: f1, Addr: b.LocalAddr(), Flow: 0x1000_0000},
				{Frames: f2, Addr: b.LocalAddr(), Flow: 0xf000_0000},
			}
			if err := a.WriteBatch(msgs); err != nil {
				t.Fatal(err)
			}
			if msgs[0].Sent != len(f1) || msgs[1].Sent != len(f2) {
				t.Fatalf("Sent = %d, %d; want %d, %d", msgs[0].Sent, msgs[1].Sent, len(f1), len(f2))
			}
			got := readN(t, b, len(f1)+len(f2))
			// Datagrams of one flow arrive in order, all from one source
			// port; the two flows leave from different ports.
			frames := [2][][]byte{f1, f2}
			var idx [2]int
			port := map[int]uint16{}
			for _, r := range got {
				fl := -1
				for f := range frames {
					if idx[f] < len(frames[f]) && bytes.Equal(r.data, frames[f][idx[f]]) {
						fl = f
						break
					}
				}
				if fl < 0 {
					t.Fatalf("unexpected or out-of-order datagram of %d bytes from %v", len(r.data), r.src)
				}
				if p, ok := port[fl]; ok && p != r.src.Port() {
					t.Errorf("flow %d changed source port %d -> %d", fl, p, r.src.Port())
				}
				port[fl] = r.src.Port()
				idx[fl]++
			}
			if port[0] == port[1] {
				t.Errorf("two flows share source port %d (flow hashes map to different sockets)", port[0])
			}
			if port[0] == b.LocalAddr().Port() || port[0] == a.LocalAddr().Port() {
				t.Errorf("sent from the listening port %d, want an ephemeral sending port", port[0])
			}
		})
	}
}

func TestConnDoesNotAllocate(t *testing.T) {
	for _, own := range []bool{false, true} {
		t.Run(map[bool]string{false: "runtime-poller", true: "own-poller"}[own], func(t *testing.T) {
			testConnDoesNotAllocate(t, tunnel.UDPOptions{OwnPoller: own})
		})
	}
}

func testConnDoesNotAllocate(t *testing.T, opts tunnel.UDPOptions) {
	a := listen(t, opts)
	b := listen(t, opts)
	frames := [][]byte{payload(1400, 0), payload(1400, 1), payload(1400, 2)}
	wmsgs := []tunnel.WriteMessage{{Frames: frames, Addr: b.LocalAddr(), Flow: 7}}
	rmsgs := make([]tunnel.ReadMessage, 4)
	for i := range rmsgs {
		rmsgs[i].Buf = make([]byte, 65535)
	}
	step := func() {
		if err := a.WriteBatch(wmsgs); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(frames); {
			n, err := b.ReadBatch(rmsgs)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range rmsgs[:n] {
				got += (m.N + m.Segment - 1) / m.Segment
			}
		}
	}
	step()
	if allocs := testing.AllocsPerRun(200, step); allocs != 0 {
		t.Errorf("WriteBatch+ReadBatch: %v allocations per run, want 0", allocs)
	}
}

func TestConnRejectsOtherFamily(t *testing.T) {
	a := listen(t, tunnel.UDPOptions{})
	msgs := []tunnel.WriteMessage{{Frames: [][]byte{payload(100, 0)}, Addr: netip.MustParseAddrPort("[::1]:8472")}}
	if err := a.WriteBatch(msgs); err == nil || msgs[0].Sent != 0 {
		t.Errorf("send to IPv6 from an IPv4 socket: err %v, sent %d", err, msgs[0].Sent)
	}
	if _, err := tunnel.ListenUDP(tunnel.UDPOptions{Addr: loopback, SourcePorts: tunnel.MaxSourcePorts + 1}); err == nil {
		t.Error("ListenUDP accepted too many source ports")
	}
}

// TestConnScatterGather sends messages whose frames are pieces of
// datagrams (a header and a payload per datagram, WriteMessage.Segment) and
// checks that every datagram arrives whole, in order, with and without GSO.
func TestConnScatterGather(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(map[bool]string{false: "offloads", true: "no-offloads"}[off], func(t *testing.T) {
			a := listen(t, tunnel.UDPOptions{DisableGSO: off, DisableGRO: off, SourcePorts: 1})
			b := listen(t, tunnel.UDPOptions{DisableGSO: off, DisableGRO: off})
			const hdr, seg = 74, 1472
			var want [][]byte
			var msgs []tunnel.WriteMessage
			// Two messages: 44 full datagrams (one GSO send at the size
			// limit), then 3 with a short last one.
			for mi, count := range []int{44, 3} {
				m := tunnel.WriteMessage{Addr: b.LocalAddr(), Flow: 1, Segment: seg}
				for i := range count {
					h := payload(hdr, byte(mi*64+i))
					p := payload(seg-hdr, byte(i*7))
					if mi == 1 && i == count-1 {
						p = p[:333]
					}
					m.Frames = append(m.Frames, h, p)
					want = append(want, append(append([]byte(nil), h...), p...))
				}
				msgs = append(msgs, m)
			}
			if err := a.WriteBatch(msgs); err != nil {
				t.Fatal(err)
			}
			if msgs[0].Sent != 44 || msgs[1].Sent != 3 {
				t.Fatalf("Sent = %d, %d; want 44, 3", msgs[0].Sent, msgs[1].Sent)
			}
			got := readN(t, b, len(want))
			for i := range want {
				if !bytes.Equal(got[i].data, want[i]) {
					t.Fatalf("datagram %d: %d bytes, want %d (or contents differ)", i, len(got[i].data), len(want[i]))
				}
			}
		})
	}
}
