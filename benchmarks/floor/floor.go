// Package floor is the benchmark floor of the overlay's datapath: the
// fastest relay we can write with the agent's system-call structure and
// none of its logic.
//
// Out: an offloading TUN (IFF_VNET_HDR, TSO) is read one packet per
// read(2), draining the queue into a batch up to and including the first
// GSO super-packet; small packets get the constant VXLAN and inner
// Ethernet header copied into their headroom, super-packets are cut into
// segments whose headers are built beside them (tunnel.Super), and the
// batch leaves for the one peer with UDP GSO sendmmsg. In: recvmmsg with
// UDP GRO, the 22-byte header stripped without a look, and runs of one
// flow written to the TUN as super-packets with writev (tunnel.Coalescer,
// which trusts every checksum).
//
// No leases, no route table, no statistics, no source checks, no VXLAN
// header checks, no MTU answers: what is left is what any userspace VTEP
// with this structure pays. The system calls are the agent's own
// (tunnel.OpenTUN, tunnel.ListenUDP, tunnel.RawVnet), so the floor moves
// with them.
//
// overlay-bench runs it as `overlay-bench floor-relay` in each node for
// the suite's path floor (benchmarks/README.md, "Floor").
package floor

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"overlay/encap"
)

// Config is one relay. Zero fields take the defaults noted.
type Config struct {
	// TUN is the name of the TUN device to create. Required.
	TUN string
	// MTU of the TUN; 0 means 1450.
	MTU int
	// Local is the UDP address to receive VXLAN on. Required.
	Local netip.AddrPort
	// Peer is the one peer's UDP address. Required.
	Peer netip.AddrPort
	// VNI of the frames sent; 0 means 1.
	VNI encap.VNI
	// MAC is the inner Ethernet source of the frames sent, PeerMAC their
	// destination (the peer's VtepMAC, which a kernel VTEP checks).
	MAC, PeerMAC encap.MAC

	// Tuning knobs, for the screening runs of the floor.

	// Batch is the most packets one TUN batch drains; 0 means 128.
	Batch int
	// NoGRO turns UDP GRO off on the receiving socket.
	NoGRO bool
	// NoCoalesce writes every received packet to the TUN alone, without
	// coalescing runs into super-packets.
	NoCoalesce bool
	// SocketBuffer is the UDP send and receive buffer; 0 means the
	// tunnel's default.
	SocketBuffer int
	// SourcePorts is the number of sending sockets among which the inner
	// flow hash picks the outer source port, as the agent does (8 by
	// default); 0 means 1, which measured no slower (benchmarks/README.md).
	SourcePorts int
	// LockThreads locks each direction's goroutine to an OS thread.
	LockThreads bool
	// Epoll makes each direction wait for the TUN and the sockets in an
	// epoll instance of its own on its locked OS thread instead of the
	// runtime poller (tunnel.TUNOptions.OwnPoller, UDPOptions.OwnPoller);
	// implies LockThreads. The own-poller lever's A/B.
	Epoll bool
	// SendMsg sends the super-packets' segmented messages with one
	// sendmsg each from a socket of the relay's own instead of the
	// tunnel's sendmmsg; ZeroCopy (which implies SendMsg) adds
	// MSG_ZEROCOPY to those sends. The zero-copy lever's A/B.
	SendMsg, ZeroCopy bool
	// TxQueueLen, when > 0, sets the TUN's transmit queue length (the
	// packets the kernel holds for the out direction before it drops;
	// Linux's default for a TUN is 500).
	TxQueueLen int
	// Pace, when > 0, makes the out direction sleep this long after every
	// batch that filled Batch: a flooding sender's relay then leaves the
	// CPUs to the receiver, and the TUN queue drops what it cannot hold.
	Pace time.Duration
	// URing reads the TUN through an io_uring ring (tunnel.TUNRing) on the
	// out goroutine's locked thread, one multishot read with a
	// provided-buffer ring, Batch+32 slots; with URingSingle (which
	// implies URing), one single-shot read per slot instead. The
	// io_uring lever's A/B.
	URing, URingSingle bool
	// CPUOut and CPUIn, when >= 0, pin the out and in goroutines' threads
	// to that CPU (implies LockThreads). -1 leaves them to the scheduler.
	CPUOut, CPUIn int
}

func (c Config) withDefaults() (Config, error) {
	if c.MTU == 0 {
		c.MTU = 1450
	}
	if c.VNI == 0 {
		c.VNI = 1
	}
	if c.Batch == 0 {
		c.Batch = 128
	}
	if c.SourcePorts == 0 {
		c.SourcePorts = 1
	}
	switch {
	case c.TUN == "":
		return c, errors.New("floor: no TUN name")
	case !c.Local.IsValid():
		return c, errors.New("floor: no local UDP address")
	case !c.Peer.IsValid() || c.Peer.Port() == 0:
		return c, errors.New("floor: no peer address (ip:port)")
	case c.MTU < 576 || c.MTU > 65535:
		return c, fmt.Errorf("floor: MTU %d out of range", c.MTU)
	case !c.VNI.Valid():
		return c, fmt.Errorf("floor: VNI %d out of range", c.VNI)
	case c.Batch < 1 || c.Batch > 1024:
		return c, fmt.Errorf("floor: batch %d not in 1..1024", c.Batch)
	case c.SourcePorts < 0:
		return c, fmt.Errorf("floor: source ports %d is negative", c.SourcePorts)
	case c.TxQueueLen < 0:
		return c, fmt.Errorf("floor: TUN queue length %d is negative", c.TxQueueLen)
	case c.Pace < 0 || c.Pace > time.Second:
		return c, fmt.Errorf("floor: pace %v not in 0..1s", c.Pace)
	case c.SocketBuffer < 0:
		return c, fmt.Errorf("floor: socket buffer %d is negative", c.SocketBuffer)
	}
	if c.ZeroCopy {
		c.SendMsg = true
	}
	if c.URingSingle {
		c.URing = true
	}
	if c.CPUOut >= 0 || c.CPUIn >= 0 || c.Epoll {
		c.LockThreads = true
	}
	return c, nil
}
