package tunnel

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"github.com/songgao/water"
	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

const cloneDevice = "/dev/net/tun"

// tcpOffloads are the TUNSETOFFLOAD flags the offload driver needs: the
// kernel may hand us TCP super-packets with partial checksums.
const tcpOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6

// errNoOffload reports a TUN without virtio-net header offloads.
var errNoOffload = errors.New("TUN offloads (IFF_VNET_HDR, TUNSETOFFLOAD) unavailable")

// OpenTUN opens a TUN device as opts say and reports which mode it runs in.
// With DriverAuto, a kernel (or sandbox) without TUN offloads gets a plain
// device and a warning in the log naming the reason.
func OpenTUN(opts TUNOptions) (Device, Mode, error) {
	drv, err := ParseDriver(string(opts.Driver))
	if err != nil {
		return nil, 0, err
	}
	if opts.MTU < 0 || opts.MTU > 65535 {
		return nil, 0, fmt.Errorf("tunnel: TUN MTU %d out of range", opts.MTU)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	var dev Device
	if opts.FD > 0 {
		dev, err = tunFromFD(opts.FD, drv)
	} else {
		switch drv {
		case DriverOffload:
			dev, err = openOffload(opts.Name)
		case DriverPlain:
			dev, err = openPlain(opts.Name)
		default:
			dev, err = openOffload(opts.Name)
			if err != nil {
				log.Warn("TUN offloads unavailable, falling back to plain mode", "device", opts.Name, "reason", err)
				var perr error
				if dev, perr = openPlain(opts.Name); perr != nil {
					err = errors.Join(err, perr)
				} else {
					err = nil
				}
			}
		}
	}
	if err != nil {
		return nil, 0, err
	}
	if opts.MTU > 0 {
		if err := setMTU(dev.Name(), opts.MTU); err != nil {
			dev.Close()
			return nil, 0, err
		}
	}
	mtu, err := getMTU(dev.Name())
	if err != nil {
		dev.Close()
		return nil, 0, err
	}
	mode := ModePlain
	switch d := dev.(type) {
	case *offloadTUN:
		d.mtu = mtu
		mode = ModeOffload
		if opts.OwnPoller {
			if err := d.ownPoller(); err != nil {
				dev.Close()
				return nil, 0, fmt.Errorf("tunnel: TUN %s own poller: %w", d.name, err)
			}
		}
	case *plainTUN:
		d.mtu = mtu
		if opts.OwnPoller {
			dev.Close()
			return nil, 0, errOwnPollerNeedsOffload
		}
		if !opts.Naive {
			d.rawCalls()
		}
	}
	return dev, mode, nil
}

// openOffload creates a TUN with IFF_VNET_HDR. Opening the clone device
// ourselves (rather than wireguard's CreateTUN) keeps the device free of
// IFF_TUN_EXCL-style assumptions and of wireguard's netlink event
// goroutines, which we would otherwise have to drain and own.
func openOffload(name string) (Device, error) {
	fd, err := unix.Open(cloneDevice, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("tunnel: open %s: %w", cloneDevice, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tunnel: TUN name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tunnel: create TUN %q with IFF_VNET_HDR: %w (%w)", name, err, errNoOffload)
	}
	return offloadFromFD(fd)
}

// offloadFromFD wraps a TUN descriptor opened with IFF_VNET_HDR in
// wireguard's offloading driver.
func offloadFromFD(fd int) (Device, error) {
	// Probe the offloads the driver insists on while we still own fd: the
	// driver's constructor wraps fd in an *os.File before it can fail, and
	// closing fd behind that file's back would be a double close.
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tcpOffloads); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tunnel: TUNSETOFFLOAD: %w (%w)", err, errNoOffload)
	}
	dev, name, err := wgtun.CreateUnmonitoredTUNFromFD(fd)
	if err != nil {
		return nil, fmt.Errorf("tunnel: TUN offload driver: %w", err)
	}
	if dev.BatchSize() <= 1 {
		dev.Close()
		return nil, fmt.Errorf("tunnel: TUN %s: %w", name, errNoOffload)
	}
	t := newOffloadTUN(dev, name)
	// wireguard turned UDP segmentation on where the kernel has it
	// (Linux 6.2); asking again tells us whether it did.
	t.uso = unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tcpOffloads|unix.TUN_F_USO4|unix.TUN_F_USO6) == nil
	return t, nil
}

// openPlain creates a TUN without offloads with water. water also clears
// the persist flag (TUNSETPERSIST), an ioctl some sandboxes (gVisor) do not
// implement; there we open the clone device ourselves, with nothing but
// TUNSETIFF.
func openPlain(name string) (Device, error) {
	ifc, err := water.New(water.Config{DeviceType: water.TUN, PlatformSpecificParams: water.PlatformSpecificParams{Name: name}})
	if err == nil {
		return &plainTUN{rw: ifc.ReadWriteCloser, name: ifc.Name()}, nil
	}
	fd, ferr := unix.Open(cloneDevice, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if ferr != nil {
		return nil, fmt.Errorf("tunnel: create plain TUN %q: %w", name, errors.Join(err, ferr))
	}
	ifr, ferr := unix.NewIfreq(name)
	if ferr == nil {
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		ferr = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if ferr != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tunnel: create plain TUN %q: %w", name, errors.Join(err, ferr))
	}
	return &plainTUN{rw: os.NewFile(uintptr(fd), cloneDevice), name: ifr.Name()}, nil
}

// tunFromFD adopts a TUN descriptor made elsewhere. Its flags decide the
// mode: a descriptor's TUNSETIFF cannot be redone.
func tunFromFD(fd int, drv Driver) (Device, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return nil, err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return nil, fmt.Errorf("tunnel: fd %d is not a TUN device (TUNGETIFF): %w", fd, err)
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_TUN == 0 || flags&unix.IFF_NO_PI == 0 {
		return nil, fmt.Errorf("tunnel: fd %d (%s) is not a TUN opened with IFF_NO_PI (flags %#x)", fd, ifr.Name(), flags)
	}
	vnet := flags&unix.IFF_VNET_HDR != 0
	switch {
	case vnet && drv == DriverPlain:
		return nil, fmt.Errorf("tunnel: fd %d (%s) was opened with IFF_VNET_HDR; use the auto or offload driver", fd, ifr.Name())
	case !vnet && drv == DriverOffload:
		return nil, fmt.Errorf("tunnel: fd %d (%s) was opened without IFF_VNET_HDR: %w", fd, ifr.Name(), errNoOffload)
	case vnet:
		return offloadFromFD(fd)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("tunnel: fd %d: set non-blocking: %w", fd, err)
	}
	return &plainTUN{rw: os.NewFile(uintptr(fd), "tun"), name: ifr.Name()}, nil
}

// ifreqSocket runs fn with a datagram socket for interface ioctls, in the
// calling thread's network namespace.
func ifreqSocket(fn func(fd int) error) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return fn(fd)
}

func setMTU(name string, mtu int) error {
	err := ifreqSocket(func(fd int) error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint32(uint32(mtu))
		return unix.IoctlIfreq(fd, unix.SIOCSIFMTU, ifr)
	})
	if err != nil {
		return fmt.Errorf("tunnel: set MTU %d on %s: %w", mtu, name, err)
	}
	return nil
}

func getMTU(name string) (int, error) {
	var mtu int
	err := ifreqSocket(func(fd int) error {
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFMTU, ifr); err != nil {
			return err
		}
		mtu = int(ifr.Uint32())
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("tunnel: get MTU of %s: %w", name, err)
	}
	return mtu, nil
}

// offloadTUN is a TUN with virtio-net header offloads, driven by
// wireguard's tun package: Read splits TSO super-packets into segments (and
// completes partial checksums), Write coalesces TCP and UDP segments of one
// flow back into super-packets.
//
// The pumps bypass Read and Write: readVnet and writeVnet move one packet
// with its virtio-net header per system call, for the scatter-gather paths
// (gso.go, gro.go). Read and Write remain for other callers (and the ICMP
// answers). readVnet and writeVnet use RawSyscall, for the reason and with
// the effect given in conn_linux.go: the descriptor is non-blocking (opened
// O_NONBLOCK, and wireguard's constructor sets it again for a descriptor
// passed in), so neither call can block.
//
// Read drains the device: after the blocking read that wakes it, it keeps
// reading while the kernel's queue holds packets and a whole super-packet
// still fits in bufs. Small packets (UDP, ACKs) come one per read(2), and
// draining lets a burst of them leave in one send, or one GSO send.
type offloadTUN struct {
	dev  wgtun.Device
	name string
	mtu  int

	raw     syscall.RawConn
	pollFds [1]unix.PollFd
	ready   bool
	pollFn  func(fd uintptr) // t.poll, bound once so Read does not allocate

	// readVnet's call state; readFn is t.readOnce, bound once.
	rbuf   []byte
	rn     int
	rerr   unix.Errno
	rwait  bool
	readFn func(fd uintptr) bool

	// With the own poller (epoll_linux.go): the closer of the TUN's
	// waiters, and readVnet's call through its waiter.
	own  *closer
	rown *ownCall

	uso bool // the kernel takes GSO_UDP_L4 packets

}

var _ Device = (*offloadTUN)(nil)

func newOffloadTUN(dev wgtun.Device, name string) *offloadTUN {
	t := &offloadTUN{dev: dev, name: name}
	if raw, err := dev.File().SyscallConn(); err == nil {
		t.raw = raw
	}
	t.pollFn = t.poll
	t.readFn = t.readOnce
	return t
}

func (t *offloadTUN) udpGSO() bool { return t.uso }

// maxVnetPieces is the most pieces one writeVnet takes (UIO_MAXIOV is
// 1024).
const maxVnetPieces = 1024

// vnetWrite is one writer's state for writeVnet: each in pump gets its
// own (newVnetWriter), so two pumps may write at once without a lock.
type vnetWrite struct {
	t    *offloadTUN
	iovs []unix.Iovec
	niov int
	werr unix.Errno
	fn   func(fd uintptr) bool // w.writeOnce, bound once
}

// newVnetWriter returns a writeVnet for one goroutine.
func (t *offloadTUN) newVnetWriter() func(pieces [][]byte) error {
	w := &vnetWrite{t: t, iovs: make([]unix.Iovec, maxVnetPieces)}
	w.fn = w.writeOnce
	return w.writeVnet
}

// writeVnet writes one packet, a virtio-net header and the packet, given
// as pieces to concatenate, with one writev. It is for the in pumps only.
func (w *vnetWrite) writeVnet(pieces [][]byte) error {
	t := w.t
	if t.raw == nil {
		return errNoOffload
	}
	if len(pieces) > len(w.iovs) {
		return fmt.Errorf("tunnel: TUN write of %d pieces", len(pieces))
	}
	w.niov = 0
	for _, b := range pieces {
		if len(b) == 0 {
			continue
		}
		w.iovs[w.niov].Base = &b[0]
		w.iovs[w.niov].SetLen(len(b))
		w.niov++
	}
	w.werr = 0
	err := t.raw.Write(w.fn)
	clear(w.iovs[:w.niov]) // do not pin the caller's buffers
	return rawErr(err, w.werr, "writev")
}

func (w *vnetWrite) writeOnce(fd uintptr) bool {
	_, errno, done := rawCall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iovs[0])), uintptr(w.niov))
	w.werr = errno
	return done
}

// rawCall makes a non-blocking system call with RawSyscall (doc.go says
// why) for a syscall.RawConn callback: it retries on EINTR, and done is
// false on EAGAIN, when the caller parks in the poller; otherwise errno is
// the call's outcome.
func rawCall(trap, a1, a2, a3 uintptr) (n uintptr, errno unix.Errno, done bool) {
	for {
		r, _, e := unix.RawSyscall(trap, a1, a2, a3)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, 0, false
		}
		return r, e, true
	}
}

// readVnet reads one packet with its virtio-net header into buf, which
// should hold vnetHdrLen+65535 bytes. With wait it parks in the runtime
// poller until a packet comes; without, it returns 0 if none is queued. It
// is for the out pump only, which then does not use Read.
func (t *offloadTUN) readVnet(buf []byte, wait bool) (int, error) {
	if t.raw == nil {
		return 0, errNoOffload
	}
	t.rbuf, t.rn, t.rerr, t.rwait = buf, 0, 0, wait
	var err error
	if t.rown != nil {
		err = t.rown.run(t.raw)
	} else {
		err = t.raw.Read(t.readFn)
	}
	t.rbuf = nil
	if err := rawErr(err, t.rerr, "read"); err != nil {
		return 0, err
	}
	return t.rn, nil
}

func (t *offloadTUN) readOnce(fd uintptr) bool {
	n, errno, done := rawCall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&t.rbuf[0])), uintptr(len(t.rbuf)))
	if !done {
		return !t.rwait // without wait, report "nothing queued"
	}
	t.rn, t.rerr = int(n), errno
	return true
}

func (t *offloadTUN) poll(fd uintptr) {
	t.pollFds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	n, err := unix.Poll(t.pollFds[:], 0)
	t.ready = err == nil && n > 0 && t.pollFds[0].Revents&unix.POLLIN != 0
}

// readable reports whether a read would find a packet now.
func (t *offloadTUN) readable() bool {
	if t.raw == nil {
		return false
	}
	t.ready = false
	if err := t.raw.Control(t.pollFn); err != nil {
		return false
	}
	return t.ready
}

func (t *offloadTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := t.dev.Read(bufs, sizes, offset)
	if err != nil {
		return n, err
	}
	room := t.dev.BatchSize() // the most segments one read may produce
	for n > 0 && len(bufs)-n >= room && t.readable() {
		k, err := t.dev.Read(bufs[n:], sizes[n:], offset)
		if err != nil {
			// The packets already read are good; the error will come
			// back on the next call if it persists.
			break
		}
		n += k
	}
	return n, nil
}

func (t *offloadTUN) Write(bufs [][]byte, offset int) (int, error) {
	return t.dev.Write(bufs, offset)
}

func (t *offloadTUN) BatchSize() int { return t.dev.BatchSize() }
func (t *offloadTUN) MTU() int       { return t.mtu }
func (t *offloadTUN) Name() string   { return t.name }

// Close wakes a readVnet sleeping in the own poller before it closes the
// device.
func (t *offloadTUN) Close() error {
	var perr error
	if t.own != nil {
		perr = t.own.close()
	}
	return errors.Join(perr, t.dev.Close())
}

// ownPoller switches readVnet to the own poller (epoll_linux.go).
func (t *offloadTUN) ownPoller() error {
	if t.raw == nil {
		return errNoOffload
	}
	c, err := newCloser()
	if err != nil {
		return err
	}
	w, err := c.add(t.raw, unix.EPOLLIN)
	if err != nil {
		c.close()
		return err
	}
	t.own, t.rown = c, newOwnCall(t.readFn, w)
	return nil
}

func (t *offloadTUN) ownPolled() bool { return t.rown != nil }

// plainTUN is a TUN without offloads: one packet per read or write system
// call. rw is a non-blocking *os.File, so Close unblocks a pending Read
// through the runtime poller.
//
// Unless naive, the calls are RawSyscalls through rw's syscall.RawConn, for
// the reason given in conn_linux.go; EAGAIN still parks the goroutine in
// the poller.
type plainTUN struct {
	rw   io.ReadWriteCloser
	name string
	mtu  int
	once closeOnce

	raw syscall.RawConn // nil: calls go through rw

	// Read's call state: the out pump is the only reader. readFn is
	// t.readOnce, bound once so Read does not allocate.
	rbuf   []byte
	rn     int
	rerr   unix.Errno
	readFn func(fd uintptr) bool

	// Write's call state, under wmu: the in pump writes, and so do the
	// out pump's ICMP answers.
	wmu     sync.Mutex
	wbuf    []byte
	werr    unix.Errno
	writeFn func(fd uintptr) bool
}

var _ Device = (*plainTUN)(nil)

// rawCalls switches t to raw system calls on rw's descriptor, if rw has
// one (it always does here: an *os.File).
func (t *plainTUN) rawCalls() {
	sc, ok := t.rw.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	t.raw, t.readFn, t.writeFn = raw, t.readOnce, t.writeOnce
}

func (t *plainTUN) readOnce(fd uintptr) bool {
	n, errno, done := rawCall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&t.rbuf[0])), uintptr(len(t.rbuf)))
	t.rn, t.rerr = int(n), errno
	return done
}

func (t *plainTUN) writeOnce(fd uintptr) bool {
	_, errno, done := rawCall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&t.wbuf[0])), uintptr(len(t.wbuf)))
	t.werr = errno
	return done
}

// rawErr maps the outcome of a raw TUN call (call is "read", "write" or
// "writev") to the error the pumps expect: os.ErrClosed once the device is
// closed.
func rawErr(err error, errno unix.Errno, call string) error {
	switch {
	case err != nil:
		// The raw connection fails only once the file is closed.
		return fmt.Errorf("tunnel: TUN %s: %w (%w)", call, os.ErrClosed, err)
	case errno == unix.EBADFD:
		return os.ErrClosed
	case errno != 0:
		return os.NewSyscallError(call, errno)
	}
	return nil
}

func (t *plainTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if t.raw != nil {
		t.rbuf, t.rn, t.rerr = bufs[0][offset:], 0, 0
		err := t.raw.Read(t.readFn)
		t.rbuf = nil
		if err := rawErr(err, t.rerr, "read"); err != nil {
			return 0, err
		}
		sizes[0] = t.rn
		return 1, nil
	}
	n, err := t.rw.Read(bufs[0][offset:])
	if err != nil {
		if errors.Is(err, syscall.EBADFD) {
			err = os.ErrClosed
		}
		return 0, err
	}
	sizes[0] = n
	return 1, nil
}

func (t *plainTUN) Write(bufs [][]byte, offset int) (int, error) {
	var errs []error
	n := 0
	if t.raw != nil {
		t.wmu.Lock()
		defer t.wmu.Unlock()
	}
	for _, b := range bufs {
		if err := t.write(b[offset:]); err != nil {
			if errors.Is(err, syscall.EBADFD) || errors.Is(err, os.ErrClosed) {
				return n, os.ErrClosed
			}
			errs = append(errs, err)
			continue
		}
		n++
	}
	if errs != nil {
		return n, errors.Join(errs...)
	}
	return n, nil
}

// write writes one packet.
func (t *plainTUN) write(b []byte) error {
	if t.raw == nil {
		_, err := t.rw.Write(b)
		return err
	}
	if len(b) == 0 {
		return nil
	}
	t.wbuf, t.werr = b, 0
	err := t.raw.Write(t.writeFn)
	t.wbuf = nil
	return rawErr(err, t.werr, "write")
}

func (t *plainTUN) BatchSize() int { return 1 }
func (t *plainTUN) MTU() int       { return t.mtu }
func (t *plainTUN) Name() string   { return t.name }
func (t *plainTUN) Close() error   { return t.once.do(t.rw.Close) }
