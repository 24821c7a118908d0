package tunnel_test

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"overlay/tunnel"
	"overlay/tunnel/tunneltest"
)

// tcpSuper builds a TCP super-packet as a kernel hands it to a TSO device:
// one IP and TCP header over payload bytes, DF set, the TCP checksum only
// partial (the pseudo-header sum), flags as given.
func tcpSuper(v6 bool, src, dst string, flags byte, seq uint32, payload []byte) []byte {
	tcp := make([]byte, 32+len(payload)) // 12 bytes of options, as Linux sends timestamps
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5201)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], 777)
	tcp[12] = 8 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 502)
	copy(tcp[20:], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
	copy(tcp[32:], payload)
	if !v6 {
		p := ipv4(src, dst, 6, true, tcp)
		binary.BigEndian.PutUint16(p[26+10:], 0xbeef) // partial, not a real checksum
		return p
	}
	p := make([]byte, 40+len(tcp))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(len(tcp)))
	p[6], p[7] = 6, 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	copy(p[40:], tcp)
	return p
}

// tcpChecksumOK verifies a segment's transport checksum with the slow
// reference sum.
func tcpChecksumOK(seg []byte) bool {
	var ip, ph []byte
	if seg[0]>>4 == 4 {
		ihl := int(seg[0]&0x0f) * 4
		ip, ph = seg[ihl:], seg[12:20]
	} else {
		ip, ph = seg[40:], seg[8:40]
	}
	var sum uint32
	for i := 0; i < len(ph); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ph[i:]))
	}
	sum += 6 + uint32(len(ip))
	return csum(ip, sum) == 0
}

func TestInSegmentsSuperPackets(t *testing.T) {
	const mtu = 1450
	for _, tc := range []struct {
		name  string
		batch int
		v6    bool
	}{{"plain/v4", 1, false}, {"offload/v4", 64, false}, {"plain/v6", 1, true}, {"offload/v6", 64, true}} {
		t.Run(tc.name, func(t *testing.T) {
			dev := tunneltest.NewDevice(tunneltest.DeviceOptions{BatchSize: tc.batch, MTU: mtu})
			conn := tunneltest.NewNetwork().Listen(addrA, tunneltest.ConnOptions{GRO: true})
			n := start(t, dev, conn, tableA(t), macA, mtu)

			payload := make([]byte, 7000)
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range payload {
				payload[i] = byte(rng.Uint32())
			}
			src, dst := "10.244.2.7", "10.244.1.5"
			if tc.v6 {
				src, dst = "fc00:0:0:2::7", "fc00:0:0:1::5"
			}
			const seq0 = 0xfffff000                                                // the sequence number wraps within the packet
			super := tcpSuper(tc.v6, src, dst, 0x80|0x10|0x08|0x01, seq0, payload) // CWR ACK PSH FIN
			if err := conn.Inject(tunneltest.Datagram{Data: frame(super, vni, macA, macB), Src: addrB}); err != nil {
				t.Fatal(err)
			}
			hdr := 20 + 32
			if tc.v6 {
				hdr = 40 + 32
			}
			mss := mtu - hdr
			want := (len(payload) + mss - 1) / mss
			var got []byte
			for i := range want {
				seg := recvPacket(t, dev)
				if len(seg) > mtu {
					t.Fatalf("segment %d is %d bytes, above the MTU %d", i, len(seg), mtu)
				}
				ipl := hdr - 32
				if !tc.v6 {
					if int(binary.BigEndian.Uint16(seg[2:4])) != len(seg) || csum(seg[:20], 0) != 0 {
						t.Errorf("segment %d: IPv4 length %d for %d bytes, or bad header checksum", i, binary.BigEndian.Uint16(seg[2:4]), len(seg))
					}
					if id := binary.BigEndian.Uint16(seg[4:6]); id != 0x1234+uint16(i) {
						t.Errorf("segment %d: IP ID %#x, want %#x", i, id, 0x1234+i)
					}
				} else if int(binary.BigEndian.Uint16(seg[4:6])) != len(seg)-40 {
					t.Errorf("segment %d: IPv6 payload length %d for %d bytes", i, binary.BigEndian.Uint16(seg[4:6]), len(seg))
				}
				tcp := seg[ipl:]
				if s := binary.BigEndian.Uint32(tcp[4:8]); s != seq0+uint32(i*mss) {
					t.Errorf("segment %d: seq %#x, want %#x", i, s, seq0+uint32(i*mss))
				}
				wantFlags := byte(0x10)
				if i == 0 {
					wantFlags |= 0x80
				}
				if i == want-1 {
					wantFlags |= 0x08 | 0x01
				}
				if tcp[13] != wantFlags {
					t.Errorf("segment %d: flags %#x, want %#x", i, tcp[13], wantFlags)
				}
				if !bytes.Equal(tcp[20:32], super[ipl+20:ipl+32]) {
					t.Errorf("segment %d: TCP options changed", i)
				}
				if !tcpChecksumOK(seg) {
					t.Errorf("segment %d: bad TCP checksum", i)
				}
				got = append(got, tcp[32:]...)
			}
			if !bytes.Equal(got, payload) {
				t.Errorf("reassembled payload differs (%d bytes, want %d)", len(got), len(payload))
			}
			eventually(t, "in counters", func() bool { return n.tun.Stats().In.Packets == uint64(want) })

			// What cannot be segmented is dropped as too big, and counted.
			big := udp4("10.244.2.7", "10.244.1.5", 1, 2, 3000, true)
			if tc.v6 {
				big = udp6("fc00:0:0:2::7", "fc00:0:0:1::5", 1, 2, 3000)
			}
			if err := conn.Inject(tunneltest.Datagram{Data: frame(big, vni, macA, macB), Src: addrB}); err != nil {
				t.Fatal(err)
			}
			eventually(t, "too_big drop", func() bool { return n.tun.Stats().In.Drops[tunnel.DropTooBig] == 1 })
		})
	}
}
