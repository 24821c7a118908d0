package tunnel_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"overlay/encap"
	"overlay/routes"
	"overlay/tunnel"
	"overlay/tunnel/tunneltest"
)

// icmpFragNeeded4 builds the ICMP "fragmentation needed" a router at src
// sends to dst about quoted, a packet dst sent.
func icmpFragNeeded4(src, dst string, mtu uint16, quoted []byte) []byte {
	ic := make([]byte, 8, 8+28)
	ic[0], ic[1] = 3, 4
	binary.BigEndian.PutUint16(ic[6:], mtu)
	ic = append(ic, quoted[:28]...)
	binary.BigEndian.PutUint16(ic[2:], csum(ic, 0))
	return ipv4(src, dst, 1, false, ic)
}

// TestInSourceChecks sends node A frames from its peers B and C, from an
// address that holds no lease, and with inner sources inside and outside
// the sender's subnets, under each SourceCheck, and checks which packets
// reach the TUN and how the others are counted.
func TestInSourceChecks(t *testing.T) {
	stranger := netip.MustParseAddrPort("172.30.250.99:8472")
	strangerMAC := encap.MAC{0x02, 0, 0, 0, 0, 0x99}
	type verdict uint8
	const (
		pass verdict = iota
		unknown
		spoofed
		unattributed // passes, but no peer's counters see it
	)
	type want struct{ strict, nat, off verdict }
	fromB4 := udp4("10.244.2.7", "10.244.1.5", 2000, 1000, 120, false)
	seg := udp4("10.244.2.7", "10.244.1.5", 2001, 1000, 100, false)
	cases := []struct {
		name string
		src  netip.AddrPort
		mac  encap.MAC // inner source MAC
		pkts [][]byte  // more than one: a GRO message of equal frames
		want want
	}{
		{"B, pod of B", addrB, macB, [][]byte{fromB4}, want{pass, pass, pass}},
		{"B from another port", netip.AddrPortFrom(addrB.Addr(), 40000), macB, [][]byte{fromB4}, want{pass, pass, pass}},
		{"B as IPv4-mapped IPv6", netip.AddrPortFrom(netip.AddrFrom16(addrB.Addr().As16()), 8472), macB, [][]byte{fromB4}, want{pass, pass, pass}},
		{"B, IPv6 pod of B", addrB, macB, [][]byte{udp6("fc00:0:0:2::7", "fc00:0:0:1::5", 2000, 1000, 140)}, want{pass, pass, pass}},
		{"B, ICMP error from B's router address", addrB, macB,
			[][]byte{icmpFragNeeded4("10.244.2.0", "10.244.1.5", 1400, udp4("10.244.1.5", "10.244.2.7", 1, 2, 1450, true))}, want{pass, pass, pass}},
		{"B, GRO run of B's pod", addrB, macB, [][]byte{seg, seg, seg}, want{pass, pass, pass}},
		{"C, pod of C", addrC, macC, [][]byte{udp4("10.244.3.9", "10.244.1.5", 1, 2, 80, false)}, want{pass, pass, pass}},
		{"B claims a pod of C", addrB, macB, [][]byte{udp4("10.244.3.9", "10.244.1.5", 1, 2, 80, false)}, want{spoofed, spoofed, pass}},
		{"B claims one of our pods", addrB, macB, [][]byte{udp4("10.244.1.9", "10.244.1.5", 1, 2, 80, false)}, want{spoofed, spoofed, unattributed}},
		{"B claims our IPv6 subnet", addrB, macB, [][]byte{udp6("fc00:0:0:1::9", "fc00:0:0:1::5", 1, 2, 80)}, want{spoofed, spoofed, unattributed}},
		{"B, source outside every lease", addrB, macB, [][]byte{udp4("192.0.2.1", "10.244.1.5", 1, 2, 80, false)}, want{spoofed, spoofed, unattributed}},
		{"B with C's MAC, pod of C", addrB, macC, [][]byte{udp4("10.244.3.9", "10.244.1.5", 1, 2, 80, false)}, want{spoofed, pass, pass}},
		{"stranger, pod of B", stranger, macB, [][]byte{fromB4}, want{unknown, pass, pass}},
		{"stranger, GRO run of B's pod", stranger, macB, [][]byte{seg, seg, seg}, want{unknown, pass, pass}},
		{"stranger with its own MAC", stranger, strangerMAC, [][]byte{fromB4}, want{unknown, unknown, pass}},
		{"no address at all", netip.AddrPort{}, macB, [][]byte{fromB4}, want{unknown, pass, pass}},
	}
	for _, check := range []tunnel.SourceCheck{tunnel.SourceCheckStrict, tunnel.SourceCheckNAT, tunnel.SourceCheckOff} {
		t.Run(check.String(), func(t *testing.T) {
			for _, batch := range []int{1, 64} {
				dev := tunneltest.NewDevice(tunneltest.DeviceOptions{BatchSize: batch})
				conn := tunneltest.NewNetwork().Listen(addrA, tunneltest.ConnOptions{GRO: true})
				table := tableA(t)
				n := startWith(t, tunnel.Options{Device: dev, Conn: conn, Table: table, VNI: vni, LocalMAC: macA, MTU: 1450, SourceCheck: check}).tun
				var delivered [][]byte
				var drops [3]uint64 // by verdict: unknown, spoofed
				var unattr uint64
				for _, c := range cases {
					var frames [][]byte
					for _, p := range c.pkts {
						frames = append(frames, frame(p, vni, macA, c.mac))
					}
					d := tunneltest.Datagram{Data: bytes.Join(frames, nil), Src: c.src}
					if len(frames) > 1 {
						d.Segment = len(frames[0])
					}
					if err := conn.Inject(d); err != nil {
						t.Fatal(err)
					}
					v := map[tunnel.SourceCheck]verdict{tunnel.SourceCheckStrict: c.want.strict, tunnel.SourceCheckNAT: c.want.nat, tunnel.SourceCheckOff: c.want.off}[check]
					switch v {
					case pass, unattributed:
						delivered = append(delivered, c.pkts...)
						if v == unattributed {
							unattr += uint64(len(c.pkts))
						}
					default:
						drops[v] += uint64(len(c.pkts))
					}
				}
				for i, want := range delivered {
					if got := recvPacket(t, dev); !bytes.Equal(got, want) {
						t.Fatalf("batch %d: packet %d written to the TUN = %x..., want %x...", batch, i, got[:min(len(got), 28)], want[:28])
					}
				}
				eventually(t, "every datagram handled", func() bool {
					s := n.Stats().In
					return s.Packets+s.Drops[tunnel.DropUnknownSource]+s.Drops[tunnel.DropSpoofedSource] >= uint64(len(delivered))+drops[unknown]+drops[spoofed]
				})
				s := n.Stats()
				if s.SourceCheck != check {
					t.Errorf("Stats().SourceCheck = %v, want %v", s.SourceCheck, check)
				}
				if got := s.In.Drops[tunnel.DropUnknownSource]; got != drops[unknown] {
					t.Errorf("batch %d: %d unknown_source drops, want %d", batch, got, drops[unknown])
				}
				if got := s.In.Drops[tunnel.DropSpoofedSource]; got != drops[spoofed] {
					t.Errorf("batch %d: %d spoofed_source drops, want %d", batch, got, drops[spoofed])
				}
				if s.In.Unattributed != unattr {
					t.Errorf("batch %d: %d unattributed packets, want %d", batch, s.In.Unattributed, unattr)
				}
				select {
				case p := <-dev.Written():
					t.Errorf("batch %d: an extra packet reached the TUN: %x", batch, p[:min(len(p), 28)])
				default:
				}
			}
		})
	}
}

// TestInSourceCheckFollowsTable: a peer that leaves the table is refused
// from the next batch on, and one that joins is accepted, with no restart.
func TestInSourceCheckFollowsTable(t *testing.T) {
	dev := tunneltest.NewDevice(tunneltest.DeviceOptions{})
	conn := tunneltest.NewNetwork().Listen(addrA, tunneltest.ConnOptions{})
	table := tableA(t)
	n := start(t, dev, conn, table, macA, 1450)
	fromC := frame(udp4("10.244.3.9", "10.244.1.5", 1, 2, 80, false), vni, macA, macC)
	fromD := frame(udp4("10.244.4.9", "10.244.1.5", 1, 2, 80, false), vni, macA, macC)
	addrD := netip.MustParseAddrPort("172.30.250.4:8472")
	send := func(d tunneltest.Datagram) {
		t.Helper()
		if err := conn.Inject(d); err != nil {
			t.Fatal(err)
		}
	}
	send(tunneltest.Datagram{Data: fromC, Src: addrC})
	recvPacket(t, dev)

	// C leaves and D joins: C's frames are refused, D's accepted. D took
	// over C's VtepMAC, so only the outer address tells them apart.
	local := table.Load().Local()
	peers := []routes.Peer{
		{Subnet: netip.MustParsePrefix("10.244.2.0/24"), Endpoint: addrB, MAC: macB},
		{Subnet: netip.MustParsePrefix("10.244.4.0/24"), Endpoint: addrD, MAC: macC},
	}
	if err := table.Update(local, peers); err != nil {
		t.Fatal(err)
	}
	send(tunneltest.Datagram{Data: fromC, Src: addrC})
	send(tunneltest.Datagram{Data: fromD, Src: addrD})
	send(tunneltest.Datagram{Data: fromC, Src: addrD}) // D claims C's old subnet
	if got := recvPacket(t, dev); !bytes.Equal(got, fromD[encap.Headroom:]) {
		t.Errorf("written %x, want D's packet", got)
	}
	eventually(t, "C refused", func() bool {
		d := n.tun.Stats().In.Drops
		return d[tunnel.DropUnknownSource] == 1 && d[tunnel.DropSpoofedSource] == 1
	})
	if ps := table.Stats(); ps[1].Subnet != peers[1].Subnet || ps[1].RxPackets != 1 {
		t.Errorf("peer D's counters: %+v", ps[1])
	}
}
