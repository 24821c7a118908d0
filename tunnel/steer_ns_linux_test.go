package tunnel_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"overlay/encap"
)

// TestNamespaceCorruptFrames checks that checksum steering never lets a
// corrupted inner packet through. Node B is a raw socket that sends, from
// B's underlay address, bursts of VXLAN frames to the tunnel at A: each
// burst is eight equal-size inner UDP datagrams to a pod socket on A (a
// run the in pump coalesces into one NEEDS_CSUM super-packet, which the
// kernel would trust), and one of them has a payload byte flipped after
// its inner checksum was computed.
//
//   - zero outer checksum (a kernel VTEP with noudpcsum): the frames reach
//     the socket whose inner checksums are verified; the corrupted
//     datagram must be left out of the run, so the kernel drops it.
//   - an outer checksum (an agent), computed before the corruption: the
//     kernel drops the frame before any socket sees it (UDP InCsumErrors),
//     so the socket whose inner checksums are trusted never holds it.
//
// Either way the pod socket must receive only intact datagrams, and most
// of the good ones, and the kernel must count every corrupted one as a
// checksum error.
func TestNamespaceCorruptFrames(t *testing.T) {
	for _, tc := range []struct {
		name   string
		outer  func(udp []byte) // sets the outer UDP checksum
		wantCs bool             // the intact frames arrive checksummed
	}{
		{"zero-outer-checksum", func(udp []byte) { binary.BigEndian.PutUint16(udp[6:], 0) }, false},
		{"outer-checksum", func(udp []byte) {
			binary.BigEndian.PutUint16(udp[6:], 0)
			binary.BigEndian.PutUint16(udp[6:], ^udpChecksum(underlayB, underlayA, udp))
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pair(t)
			ta := startNode(t, a, cfgA, offloadFlavour)
			const port = 5555
			var pod *net.UDPConn
			a.do(t, func() error {
				var err error
				pod, err = net.ListenUDP("udp4", &net.UDPAddr{IP: podA.AsSlice(), Port: port})
				if err == nil {
					err = pod.SetReadBuffer(8 << 20)
				}
				return err
			})
			defer pod.Close()
			csumErrs0 := udpInCsumErrors(t, a)
			var fd int
			b.do(t, func() error {
				var err error
				fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP)
				return err
			})
			defer unix.Close(fd)
			to := &unix.SockaddrInet4{Addr: underlayA.As4()}

			const bursts, perBurst, bad = 40, 8, 3
			payload := 200
			for i := range bursts {
				for j := range perBurst {
					d := corruptibleFrame(i, j, payload)
					tc.outer(d)
					if j == bad {
						// Corrupted on the way: after both the inner and
						// the outer checksum were computed.
						d[len(d)-payload/2] ^= 0x10
					}
					if err := unix.Sendto(fd, d, 0, to); err != nil {
						t.Fatal(err)
					}
				}
				time.Sleep(time.Millisecond)
			}
			good, corrupt := 0, 0
			buf := make([]byte, 2048)
			for {
				pod.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
				n, err := pod.Read(buf)
				if err != nil {
					if errors.Is(err, os.ErrDeadlineExceeded) {
						break
					}
					t.Fatal(err)
				}
				if n != payload || !bytes.Equal(buf[:n], pattern(buf[0], buf[1], payload)) {
					corrupt++
					continue
				}
				good++
			}
			s := ta.Stats()
			csumErrs := udpInCsumErrors(t, a) - csumErrs0
			t.Logf("%d intact datagrams delivered, %d corrupted; agent: %d packets in, %d datagrams checksummed; UDP InCsumErrors +%d",
				good, corrupt, s.In.Packets, s.In.Checksummed, csumErrs)
			if corrupt != 0 {
				t.Errorf("%d corrupted datagrams reached the pod", corrupt)
			}
			if good < bursts*(perBurst-1)/2 {
				t.Errorf("only %d of %d intact datagrams delivered", good, bursts*(perBurst-1))
			}
			// Every corrupted datagram is caught by a kernel checksum:
			// the inner one when the in pump leaves it out of a run, the
			// outer one before any socket sees it.
			if csumErrs < bursts {
				t.Errorf("the kernel counted %d bad checksums, want >= %d", csumErrs, bursts)
			}
			if cs := s.In.Checksummed != 0; cs != tc.wantCs {
				t.Errorf("%d datagrams taken as checksummed, want some: %v", s.In.Checksummed, tc.wantCs)
			}
		})
	}
}

// corruptibleFrame builds the outer UDP datagram (header with a zero
// checksum, VXLAN, inner Ethernet, IPv4 and UDP) of datagram j of burst i,
// from B's pod to A's pod socket; its last payload bytes end the datagram.
func corruptibleFrame(i, j, payload int) []byte {
	const port = 5555
	in := make([]byte, encap.Headroom+20+8+payload)
	ip := in[encap.Headroom:]
	ip[0], ip[1] = 0x45, 0
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+payload))
	binary.BigEndian.PutUint16(ip[4:], uint16(i*16+j))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8], ip[9] = 64, 17
	src, dst := podB.As4(), podA.As4()
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(ip[10:], ^sum16(ip[:20], 0))
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], port)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+payload))
	copy(udp[8:], pattern(byte(i), byte(j), payload))
	binary.BigEndian.PutUint16(udp[6:], ^udpChecksum(podB, podA, udp))
	if err := encap.Encap(in, 1, cfgA.mac, cfgB.mac); err != nil {
		panic(err)
	}
	// Encap wrote VXLAN and Ethernet into in[:Headroom]; prepend the
	// outer UDP header (the raw socket adds the IP header).
	vx := in[0:]
	d := make([]byte, 8+len(vx))
	binary.BigEndian.PutUint16(d[0:], 40001)
	binary.BigEndian.PutUint16(d[2:], encap.PortLinux)
	binary.BigEndian.PutUint16(d[4:], uint16(len(d)))
	copy(d[8:], vx)
	return d
}

// pattern is the payload of datagram (i, j): it starts with i and j, so a
// receiver can rebuild it.
func pattern(i, j byte, n int) []byte {
	p := make([]byte, n)
	p[0], p[1] = i, j
	for k := 2; k < n; k++ {
		p[k] = byte(k*7) ^ i ^ j<<4
	}
	return p
}

// sum16 is the RFC 1071 sum of b added to initial, folded, byte at a time.
func sum16(b []byte, initial uint32) uint16 {
	s := initial
	for k := 0; k+1 < len(b); k += 2 {
		s += uint32(b[k])<<8 | uint32(b[k+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// udpChecksum is the folded sum of the IPv4 pseudo-header and udp (whose
// checksum field the caller zeroed), not complemented.
func udpChecksum(src, dst interface{ As4() [4]byte }, udp []byte) uint16 {
	s, d := src.As4(), dst.As4()
	pseudo := uint32(sum16(append(s[:], d[:]...), 0)) + 17 + uint32(len(udp))
	return sum16(udp, pseudo)
}

// udpInCsumErrors reads the UDP InCsumErrors counter of ns.
func udpInCsumErrors(t *testing.T, ns *namespace) uint64 {
	t.Helper()
	var v uint64
	ns.do(t, func() error {
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		var names []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 0 || fields[0] != "Udp:" {
				continue
			}
			if names == nil {
				names = fields
				continue
			}
			for k, name := range names {
				if name == "InCsumErrors" && k < len(fields) {
					v, err = strconv.ParseUint(fields[k], 10, 64)
					return err
				}
			}
		}
		return fmt.Errorf("no Udp InCsumErrors in /proc/net/snmp")
	})
	return v
}
