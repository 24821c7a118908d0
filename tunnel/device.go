package tunnel

import (
	"fmt"
	"log/slog"
)

// Device is the local end of the overlay: a TUN device carrying bare IP
// packets, read and written in batches at an offset, so the caller can keep
// headroom in front of every packet.
//
// Read and Write may be called concurrently with each other, but each by one
// goroutine at a time. Close may be called at any time, from any goroutine.
type Device interface {
	// Read reads one or more packets, blocking until at least one is
	// available. Packet i is stored at bufs[i][offset:offset+sizes[i]].
	// len(sizes) must be >= len(bufs); len(bufs) should be at least
	// BatchSize(), because one read from an offloading device may yield a
	// TCP super-packet split into up to that many segments, each no longer
	// than MTU(). It returns the number of packets read. After Close it
	// returns an error matching os.ErrClosed or net.ErrClosed. Any other
	// error is for one read: the caller counts it and reads again.
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)

	// Write writes the packets bufs[i][offset:]. offset must be at least
	// WriteHeadroom. If BatchSize() > 1 the device may coalesce packets of
	// one TCP or UDP flow into one super-packet (GRO): it may then append to
	// bufs[i] within its capacity and overwrite bufs[i][:offset], so the
	// caller must pass buffers it owns exclusively, each with spare capacity
	// it does not mind losing. It returns a count of what was written and
	// the errors of the packets that could not be written; after Close it
	// returns an error matching os.ErrClosed.
	Write(bufs [][]byte, offset int) (int, error)

	// BatchSize is the number of packets one Read may return. It is above
	// 1 exactly when the device offloads segmentation and coalescing, and
	// never changes.
	BatchSize() int

	// MTU is the device's MTU as configured when it was opened.
	MTU() int

	// Name is the device's interface name.
	Name() string

	// Close closes the device, unblocking Read. It is idempotent.
	Close() error
}

// WriteHeadroom is the least offset Device.Write accepts: room for the
// virtio-net header an offloading TUN prepends (struct virtio_net_hdr, 10
// bytes). encap.Headroom is larger, so decapsulated packets qualify.
const WriteHeadroom = 10

// Mode is how a TUN device moves packets.
type Mode uint8

const (
	// ModePlain reads and writes one packet per system call, with no
	// offloads: the kernel segments TCP before the packet reaches us.
	ModePlain Mode = iota
	// ModeOffload uses the TUN's virtio-net header: the kernel hands us TCP
	// super-packets (TSO/USO), which we split into segments in userspace,
	// and takes coalesced super-packets (GRO) from us.
	ModeOffload
)

func (m Mode) String() string {
	switch m {
	case ModePlain:
		return "plain"
	case ModeOffload:
		return "offload"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// Driver selects how OpenTUN opens the device.
type Driver string

const (
	// DriverAuto tries the offload driver and falls back to the plain one
	// when the kernel lacks the TUN offloads.
	DriverAuto Driver = "auto"
	// DriverOffload requires virtio-net header offloads
	// (golang.zx2c4.com/wireguard/tun), failing otherwise.
	DriverOffload Driver = "offload"
	// DriverPlain uses a plain TUN without offloads
	// (github.com/songgao/water): slower, but works where offloads do not.
	DriverPlain Driver = "plain"
)

// ParseDriver parses a driver name; the empty string means DriverAuto.
func ParseDriver(s string) (Driver, error) {
	switch d := Driver(s); d {
	case "":
		return DriverAuto, nil
	case DriverAuto, DriverOffload, DriverPlain:
		return d, nil
	}
	return "", fmt.Errorf("tunnel: unknown TUN driver %q (want auto, offload or plain)", s)
}

// TUNOptions configure OpenTUN.
type TUNOptions struct {
	// Name is the interface name to create ("overlay0"); empty lets the
	// kernel choose (tun0, tun1, ...). Ignored when FD is set.
	Name string
	// MTU is set on the device when nonzero.
	MTU int
	// FD, when positive, is an already-open TUN file descriptor (made by a
	// privileged helper, or in a user namespace) to use instead of creating
	// a device. OpenTUN takes ownership of it. Its mode follows how it was
	// opened: IFF_VNET_HDR gives offload mode. File descriptor 0 is never a
	// TUN, so zero means none.
	FD int
	// Driver selects the implementation; empty means DriverAuto.
	Driver Driver
	// Naive makes a plain device read and write through os.File, the
	// ordinary system-call path a straightforward Go program takes: the
	// tunnel's naive mode, the benchmark floor. Otherwise a plain device
	// makes its calls as the offload driver does (conn_linux.go says why).
	Naive bool
	// OwnPoller makes the out pump's packet reads (RawVnet's Read) wait
	// for the device in an epoll instance of their own on the reading
	// thread instead of the runtime poller (epoll_linux.go); the Tunnel
	// then locks its pumps to their OS threads. It needs an offloading
	// TUN: OpenTUN fails if the device is plain.
	OwnPoller bool
	// Logger receives the warning when DriverAuto falls back to plain
	// mode; nil means slog.Default().
	Logger *slog.Logger
}
