package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// Checksum steering.
//
// Every inner packet the in pump coalesces is read once, to verify its
// transport checksum, because the kernel trusts the NEEDS_CSUM super-packet
// it is written in (gro.go). That pass is redundant when the VXLAN datagram
// carried an outer UDP checksum: the outer checksum covers the whole frame,
// inner packet included, and the kernel verifies it before any datagram
// reaches a socket (a bad one is dropped and counted as UDP InCsumErrors;
// on a veth, where the sender's CHECKSUM_PARTIAL skb crosses memory to
// memory, it is never computed at all, and there is nothing to verify).
// Agents send with an outer checksum, as any UDP socket does, computed by
// the kernel or the device in the GSO send; kernel VTEPs over IPv4 send a
// zero checksum (the vxlan device's udpcsum is off by default, as flannel
// leaves it), which covers nothing.
//
// recvmmsg does not say which a datagram had, so the kernel is asked to
// sort them: two sockets on the VXLAN port form an SO_REUSEPORT group, and
// a classic BPF program attached to the group (SO_ATTACH_REUSEPORT_CBPF)
// picks the socket per datagram by the UDP header's checksum field. Index
// 0, the first socket bound (udpConn.rx), gets the zero-checksum datagrams
// and whatever the program cannot classify (a failed load returns 0), so
// every doubt falls on the side of verifying; index 1 (udpConn.rxSum) gets
// those with a checksum, and its ReadMessages say Checksummed. The Tunnel
// runs one in pump per socket, so a kernel peer's traffic and an agent's do
// not wait for each other either.
//
// Joining a reuseport group needs the same user (the kernel checks the
// owner's UID), so another user cannot take a share of the port; a second
// agent run by the same user would, which a single socket would have
// refused with EADDRINUSE (the agent's TUN device is the guard there).

// Socket indexes in the reuseport group, in bind order.
const (
	steerZero    = 0 // no outer checksum: verify the inner ones
	steerChecked = 1 // outer checksum verified by the kernel
)

// skfNetOff is SKF_NET_OFF (include/uapi/linux/filter.h): classic BPF
// loads at this offset plus k read from the network header. A reuseport
// program runs with the skb's data at the UDP payload, so the UDP header is
// reachable only this way.
const skfNetOff = -0x100000

// steerProgram is the classic BPF program that returns steerChecked for a
// datagram whose UDP checksum field is nonzero and steerZero otherwise.
// IPv4: the UDP header follows the IP header's IHL*4 bytes (options
// included); IPv6: the fixed 40-byte header (a datagram behind extension
// headers reads some other field and, if zero, is verified anyway).
func steerProgram(is6 bool) []unix.SockFilter {
	const (
		ldAbsB = unix.BPF_LD | unix.BPF_B | unix.BPF_ABS
		ldAbsH = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		ldIndH = unix.BPF_LD | unix.BPF_H | unix.BPF_IND
		andK   = unix.BPF_ALU | unix.BPF_AND | unix.BPF_K
		lshK   = unix.BPF_ALU | unix.BPF_LSH | unix.BPF_K
		tax    = unix.BPF_MISC | unix.BPF_TAX
		jeqK   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		retK   = unix.BPF_RET | unix.BPF_K
	)
	net := func(k int) uint32 { return uint32(int32(skfNetOff + k)) }
	var load []unix.SockFilter
	if is6 {
		load = []unix.SockFilter{
			{Code: ldAbsH, K: net(40 + 6)}, // UDP checksum
		}
	} else {
		load = []unix.SockFilter{
			{Code: ldAbsB, K: net(0)}, // version and IHL
			{Code: andK, K: 0x0f},
			{Code: lshK, K: 2},
			{Code: tax},                   // X = IP header length
			{Code: ldIndH, K: net(0 + 6)}, // UDP checksum at X+6
		}
	}
	return append(load,
		unix.SockFilter{Code: jeqK, K: 0, Jt: 0, Jf: 1},
		unix.SockFilter{Code: retK, K: steerZero},
		unix.SockFilter{Code: retK, K: steerChecked},
	)
}

// listenRx opens a receiving socket on addr, joining (or starting) the
// port's reuseport group when reuse is set.
func listenRx(network string, addr netip.AddrPort, reuse bool) (*net.UDPConn, syscall.RawConn, error) {
	var lc net.ListenConfig
	if reuse {
		lc.Control = func(_, _ string, raw syscall.RawConn) error {
			return setsockopt(raw, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}
	}
	pc, err := lc.ListenPacket(context.Background(), network, addr.String())
	if err != nil {
		return nil, nil, fmt.Errorf("tunnel: listen UDP %v: %w", addr, err)
	}
	u := pc.(*net.UDPConn)
	raw, err := u.SyscallConn()
	if err != nil {
		u.Close()
		return nil, nil, fmt.Errorf("tunnel: listen UDP %v: %w", addr, err)
	}
	return u, raw, nil
}

// steer opens c.rxSum on c.rx's address and attaches the steering program
// to their group; on failure c.rxSum stays nil and c.rx receives
// everything.
func (c *udpConn) steer(network string, bufSize int) error {
	u, raw, err := listenRx(network, c.local, true)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		u.Close()
		// Without the program the group would spread datagrams over
		// both sockets by hash; with rxSum closed, rx has them all.
		return err
	}
	if err := setBuffer(raw, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, bufSize); err != nil {
		return fail(fmt.Errorf("receive buffer: %w", err))
	}
	if c.gro && setsockopt(raw, unix.IPPROTO_UDP, unix.UDP_GRO, 1) != nil {
		return fail(errors.New("UDP_GRO on the second socket refused"))
	}
	prog := steerProgram(c.is6)
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	var serr error
	if err := c.rxRaw.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
	}); err != nil {
		return fail(err)
	}
	if serr != nil {
		return fail(fmt.Errorf("SO_ATTACH_REUSEPORT_CBPF: %w", serr))
	}
	c.rxSum, c.rxSumRaw = u, raw
	return nil
}

var _ checksummedReader = (*udpConn)(nil)

func (c *udpConn) steered() bool { return c.rxSum != nil }

func (c *udpConn) readChecksummed(msgs []ReadMessage) (int, error) {
	return c.read(c.rxSumRaw, &c.rSum, msgs)
}
