package tunnel_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"overlay/encap"
	"overlay/routes"
	"overlay/tunnel"
	"overlay/tunnel/tunneltest"
)

// BenchmarkPumpsFake measures each pump alone over fakes that allocate
// nothing and make no system calls: the datapath's own cost per packet
// (lookup, encapsulation or validation, grouping, counters), plus the fakes'
// channel hand-off. One op is one packet. "in-unchecked" is "in" with the
// source checks off (SourceCheckOff): the A/B of their cost.
func BenchmarkPumpsFake(b *testing.B) {
	for _, batch := range []int{1, 64} {
		for _, dir := range []string{"out", "in", "in-unchecked"} {
			b.Run(fmt.Sprintf("%s/batch=%d", dir, batch), func(b *testing.B) {
				dev := tunneltest.NewDevice(tunneltest.DeviceOptions{BatchSize: batch, Discard: true, Queue: 4096})
				conn := tunneltest.NewNetwork().Listen(addrA, tunneltest.ConnOptions{GSO: batch > 1, GRO: batch > 1, Discard: true, Queue: 4096})
				check := tunnel.SourceCheckStrict
				if dir == "in-unchecked" {
					check = tunnel.SourceCheckOff
				}
				startWith(b, tunnel.Options{Device: dev, Conn: conn, Table: tableA(b), VNI: vni, LocalMAC: macA, MTU: 1450, SourceCheck: check})
				out := udp4("10.244.1.5", "10.244.2.7", 1000, 2000, 1400, true)
				in := tunneltest.Datagram{Data: frame(udp4("10.244.2.7", "10.244.1.5", 2000, 1000, 1400, true), vni, macA, macB), Src: addrB}
				done := func() uint64 { return conn.Frames() }
				if dir != "out" {
					done = dev.WrittenPackets
				}
				base := done()
				b.ReportAllocs()
				b.SetBytes(1400)
				b.ResetTimer()
				begin := time.Now()
				for range b.N {
					var err error
					if dir == "out" {
						err = dev.Inject(out)
					} else {
						err = conn.Inject(in)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				eventually(b, "packets through", func() bool { return done()-base >= uint64(b.N) })
				b.ReportMetric(float64(b.N)/time.Since(begin).Seconds(), "pkts/s")
			})
		}
	}
}

// BenchmarkLoopbackUDP runs two tunnels over real UDP sockets on 127.0.0.1
// (GSO and GRO where the kernel has them), with fake TUNs: packets injected
// into A's TUN come out of B's. One op is one 1400-byte packet; loss (the
// UDP receive buffer overflowing) is reported, not hidden.
func BenchmarkLoopbackUDP(b *testing.B) {
	for _, naive := range []bool{false, true} {
		b.Run(map[bool]string{false: "batched", true: "naive"}[naive], func(b *testing.B) {
			batch := 64
			if naive {
				batch = 1
			}
			ca := listen(b, tunnel.UDPOptions{Naive: naive})
			cb := listen(b, tunnel.UDPOptions{Naive: naive})
			var ta, tb routes.Table
			if err := ta.Update([]netip.Prefix{subnetA}, []routes.Peer{{Subnet: subnetB, Endpoint: cb.LocalAddr(), MAC: macB}}); err != nil {
				b.Fatal(err)
			}
			if err := tb.Update([]netip.Prefix{subnetB}, []routes.Peer{{Subnet: subnetA, Endpoint: ca.LocalAddr(), MAC: macA}}); err != nil {
				b.Fatal(err)
			}
			devA := tunneltest.NewDevice(tunneltest.DeviceOptions{BatchSize: batch, Queue: 4096})
			devB := tunneltest.NewDevice(tunneltest.DeviceOptions{BatchSize: batch, Discard: true})
			for _, n := range []struct {
				dev  *tunneltest.Device
				conn tunnel.Conn
				tb   *routes.Table
			}{{devA, ca, &ta}, {devB, cb, &tb}} {
				tun, err := tunnel.New(tunnel.Options{Device: n.dev, Conn: n.conn, Table: n.tb, VNI: vni, LocalMAC: map[*tunneltest.Device]encap.MAC{devA: macA, devB: macB}[n.dev], Naive: naive, Logger: quietLogger()})
				if err != nil {
					b.Fatal(err)
				}
				errc := make(chan error, 1)
				go func() { errc <- tun.Run(b.Context()) }()
				b.Cleanup(func() { tun.Close(); <-errc })
			}
			pkts := make([][]byte, 4)
			for i := range pkts {
				pkts[i] = udp4("10.244.1.5", "10.244.2.7", uint16(1000+i), 2000, 1400, true)
			}
			b.ReportAllocs()
			b.SetBytes(1400)
			b.ResetTimer()
			begin := time.Now()
			for i := range b.N {
				if err := devA.Inject(pkts[i/64%4]); err != nil {
					b.Fatal(err)
				}
			}
			// Wait until everything arrived or nothing moved for a while.
			last, lastChange := devB.WrittenPackets(), time.Now()
			for last < uint64(b.N) && time.Since(lastChange) < 500*time.Millisecond {
				time.Sleep(time.Millisecond)
				if n := devB.WrittenPackets(); n != last {
					last, lastChange = n, time.Now()
				}
			}
			elapsed := time.Since(begin)
			b.ReportMetric(float64(last)/elapsed.Seconds(), "pkts/s")
			b.ReportMetric(100*float64(uint64(b.N)-last)/float64(b.N), "loss-%")
		})
	}
}
