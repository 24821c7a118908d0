package tunnel

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestChecksumSteering sends datagrams with and without a UDP checksum
// (SO_NO_CHECK, as a kernel VTEP with udpcsum off sends them) to a
// steering Conn on loopback, interleaved, and checks that each arrives on
// its own socket: the zero-checksum ones on ReadBatch, marked unverified,
// the others on readChecksummed, marked Checksummed. Needs no root.
func TestChecksumSteering(t *testing.T) {
	for _, fam := range []struct {
		name string
		addr netip.AddrPort
	}{{"ipv4", netip.MustParseAddrPort("127.0.0.1:0")}, {"ipv6", netip.MustParseAddrPort("[::1]:0")}} {
		t.Run(fam.name, func(t *testing.T) {
			conn, err := ListenUDP(UDPOptions{Addr: fam.addr, SteerChecksums: true, DisableGRO: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Skipf("no %s loopback: %v", fam.name, err)
			}
			defer conn.Close()
			c := conn.(*udpConn)
			if !c.steered() {
				t.Fatal("steering not active")
			}
			network := "udp4"
			if fam.addr.Addr().Is6() {
				network = "udp6"
			}
			sum := dial(t, network, c.local, false)
			zero := sum
			if network == "udp4" {
				// IPv6 forbids a zero UDP checksum (RFC 8200): only IPv4
				// senders can omit it.
				zero = dial(t, network, c.local, true)
			}
			const n = 20
			for i := range n {
				if _, err := sum.Write(fmt.Appendf(nil, "sum %d", i)); err != nil {
					t.Fatal(err)
				}
				if zero != sum {
					if _, err := zero.Write(fmt.Appendf(nil, "zero %d", i)); err != nil {
						t.Fatal(err)
					}
				}
			}
			wantZero := n
			if zero == sum {
				wantZero = 0
			}
			check := func(name string, read func([]ReadMessage) (int, error), want int, checksummed bool, prefix string) {
				t.Helper()
				msgs := make([]ReadMessage, 8)
				for i := range msgs {
					msgs[i].Buf = make([]byte, 2048)
				}
				got := 0
				for got < want {
					k, err := read(msgs)
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					for _, m := range msgs[:k] {
						if s := string(m.Buf[:m.N]); len(s) < len(prefix) || s[:len(prefix)] != prefix || m.Checksummed != checksummed {
							t.Errorf("%s received %q, Checksummed %v", name, s, m.Checksummed)
						}
					}
					got += k
				}
				if got != want {
					t.Errorf("%s: %d datagrams, want %d", name, got, want)
				}
			}
			check("readChecksummed", c.readChecksummed, n, true, "sum ")
			check("ReadBatch", c.ReadBatch, wantZero, false, "zero ")
			// Nothing else may be left on either socket.
			for name, raw := range map[string]interface {
				Control(func(fd uintptr)) error
			}{"zero-checksum socket": c.rxRaw, "checksummed socket": c.rxSumRaw} {
				var queued int
				raw.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
				if queued != 0 {
					t.Errorf("%s still holds %d bytes", name, queued)
				}
			}
		})
	}
}

// dial opens a UDP socket connected to to, without a checksum (SO_NO_CHECK)
// if noCheck.
func dial(t *testing.T, network string, to netip.AddrPort, noCheck bool) *net.UDPConn {
	t.Helper()
	u, err := net.DialUDP(network, nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	if noCheck {
		raw, err := u.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		if err := setsockopt(raw, unix.SOL_SOCKET, unix.SO_NO_CHECK, 1); err != nil {
			t.Fatal(err)
		}
	}
	u.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return u
}
