package tunnel

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TUNRing reads an offloading TUN through io_uring: a small ring written
// on golang.org/x/sys/unix's raw system calls (x/sys has the call numbers
// and nothing else; the module proxy serves no io_uring binding, and the
// ABI needed here is four structures), for the io_uring lever of issue 14
// (benchmarks/README.md, "Floor").
//
// Reads. Two ways, chosen by TUNRingOptions.Multishot:
//
//   - single-shot (the default): one IORING_OP_READ per slot, Slots of
//     them queued on the TUN; a consumed slot is re-queued with
//     Release, and the re-queued reads are submitted by the next
//     io_uring_enter, which also reaps.
//   - multishot: one IORING_OP_READ_MULTISHOT (Linux 6.7) that picks its
//     buffer from a provided-buffer ring of Slots entries; Release puts
//     the slot back on that ring with a store, no system call. One read
//     waits on the TUN's wait queue instead of Slots of them, so a packet
//     that comes alone wakes one poll entry, not Slots.
//
// Either way Read takes completions from the completion queue without a
// system call while there are any, and enters the kernel only when it is
// empty. The TUN is registered as the ring's fixed file 0: the requests
// hold their own reference, and a re-queued read can never reach another
// file that took the descriptor's number after the device was closed.
//
// Blocking. The TUN's descriptor is O_NONBLOCK (the runtime poller
// drives its other calls). io_uring makes its first attempt at a read
// with IOCB_NOWAIT anyway and, when the queue is empty, arms its internal
// poll on the TUN and completes the read from task work when a packet
// comes, with no io-wq thread. Whether it does so for an O_NONBLOCK file
// too depends on the file promising non-blocking attempts (FMODE_NOWAIT);
// otherwise the read completes with -EAGAIN. On this machine's kernel
// (6.18) the TUN gets no -EAGAIN completions with O_NONBLOCK set
// (TestTUNRing counts none), so the descriptor is left alone; should a
// kernel post -EAGAIN, the ring clears O_NONBLOCK on the TUN at the first
// one (a flag of the open file, so from then on a read(2) of the TUN
// would block: nothing else reads a TUN that a ring reads; the writes
// stay as they are, since a TUN write never waits for room) and re-queues
// the read, so no -EAGAIN loop can spin.
//
// Waking. A read queued on the TUN does not end when the device is
// closed (the ring holds the file). Close writes an eventfd whose poll
// (IORING_OP_POLL_ADD, queued at start) completes on the ring, which wakes
// a Read waiting in io_uring_enter; Read then reports os.ErrClosed. Free,
// by the reading goroutine once it is done, cancels what is queued, reaps
// the cancellations (bounded by a timeout), and releases the ring and the
// slots. The slots are anonymous mmap memory, not Go heap, so no
// collector ever sees the addresses the kernel writes to.
//
// Threads. Task work runs in the thread that submitted the request, so
// the goroutine that calls Read must stay on one OS thread
// (runtime.LockOSThread) for its whole life; the ring is then set up with
// IORING_SETUP_SINGLE_ISSUER and DEFER_TASKRUN: the completions' task work
// runs only when that thread enters io_uring_enter to reap, in one batch,
// and a poll wake-up never interrupts the thread while it works. A wait
// (min_complete 1) is a unix.Syscall6, so the runtime hands the P away
// while the thread sleeps; an enter that does not wait is a RawSyscall6,
// for the reason conn_linux.go gives.
//
// One goroutine (Read, Release, Slot, Free); Close from any.
type TUNRing struct {
	fd    int
	efd   int
	slots int
	size  int
	at    int // offset in a slot where the kernel writes the packet
	multi bool
	freed bool
	tun   *offloadTUN
	// blocking is set once O_NONBLOCK has been cleared on the TUN
	// after an -EAGAIN completion.
	blocking bool
	// EAGAINs counts the -EAGAIN completions (the tests read it).
	EAGAINs int
	closed  atomic.Bool
	once    sync.Once

	ringMem []byte // SQ and CQ rings (IORING_FEAT_SINGLE_MMAP)
	sqeMem  []byte
	bufMem  []byte // the slots
	pbufMem []byte // the provided-buffer ring (multishot)

	sqHead, sqTail, sqFlags *uint32
	sqMask                  uint32
	sqes                    []uringSQE
	cqHead, cqTail          *uint32
	cqMask                  uint32
	cqes                    []uringCQE

	pbuf     []uringBuf // the provided-buffer ring's entries
	pbufTail uint16     // the ring's tail, which only we write
	pbufMask uint16

	// armed is whether the multishot read is queued (a completion without
	// IORING_CQE_F_MORE ends it: Read queues it again).
	armed bool
	// queued counts the reads queued on the TUN, and the wake poll.
	queued int
}

// TUNRingOptions configure NewTUNRing.
type TUNRingOptions struct {
	// Slots is the number of packet buffers (reads queued at once); 0
	// means 128. At most 4096.
	Slots int
	// Headroom is the room left in front of each packet's virtio-net
	// header in its slot, for headers the reader writes before the
	// packet.
	Headroom int
	// Multishot uses one multishot read and a provided-buffer ring
	// instead of one read per slot.
	Multishot bool
}

// io_uring ABI (include/uapi/linux/io_uring.h).
const (
	uringOpPollAdd       = 6
	uringOpAsyncCancel   = 14
	uringOpRead          = 22
	uringOpReadMultishot = 49

	uringSqeFixedFile    = 1 << 0
	uringSqeBufferSelect = 1 << 5

	uringSetupSingleIssuer = 1 << 12
	uringSetupDeferTaskrun = 1 << 13

	uringFeatSingleMmap = 1 << 0
	uringFeatExtArg     = 1 << 8

	uringEnterGetEvents = 1 << 0
	uringEnterExtArg    = 1 << 3

	uringCqeFBuffer    = 1 << 0
	uringCqeFMore      = 1 << 1
	uringCqeBufferShft = 16

	uringOffSQRing = 0
	uringOffSQEs   = 0x10000000

	uringRegisterFiles    = 2
	uringUnregisterFiles  = 3
	uringRegisterPbufRing = 22

	uringCancelAll = 1 << 0
	uringCancelAny = 1 << 2

	// user_data tags: slot i is i; these are above any slot.
	uringTagWake   = 1 << 32
	uringTagMulti  = 1<<32 + 1
	uringTagCancel = 1<<32 + 2

	uringBufGroup = 0
)

type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	pad         uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

type uringSQOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type uringCQOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  uringSQOffsets
	cqOff                                                                  uringCQOffsets
}

type uringBuf struct {
	addr uint64
	len  uint32
	bid  uint16
	resv uint16 // entry 0's is the ring's tail
}

type uringBufReg struct {
	ringAddr    uint64
	ringEntries uint32
	bgid        uint16
	pad         uint16
	resv        [3]uint64
}

type uringGetEventsArg struct {
	sigmask   uint64
	sigmaskSz uint32
	pad       uint32
	ts        uint64
}

// Compile-time checks of the ABI sizes.
var (
	_ [64 - unsafe.Sizeof(uringSQE{})]struct{}
	_ [unsafe.Sizeof(uringSQE{}) - 64]struct{}
	_ [16 - unsafe.Sizeof(uringCQE{})]struct{}
	_ [120 - unsafe.Sizeof(uringParams{})]struct{}
	_ [unsafe.Sizeof(uringParams{}) - 120]struct{}
	_ [16 - unsafe.Sizeof(uringBuf{})]struct{}
	_ [40 - unsafe.Sizeof(uringBufReg{})]struct{}
)

// NewTUNRing sets up a ring reading d, an offloading TUN (OpenTUN with
// DriverOffload), and queues its reads. d's own Read and the VnetIO Read
// must not be used afterwards (see TUNRing on O_NONBLOCK).
// Call it on the OS thread that will call Read (runtime.LockOSThread).
func NewTUNRing(d Device, opts TUNRingOptions) (*TUNRing, error) {
	t, ok := d.(*offloadTUN)
	if !ok || t.raw == nil {
		return nil, fmt.Errorf("tunnel: io_uring reads: %w", errNoOffload)
	}
	if opts.Slots == 0 {
		opts.Slots = 128
	}
	if opts.Slots < 1 || opts.Slots > 4096 || opts.Headroom < 0 || opts.Headroom > 4096 {
		return nil, fmt.Errorf("tunnel: io_uring reads: %d slots, headroom %d", opts.Slots, opts.Headroom)
	}
	tunFd := -1
	if err := t.raw.Control(func(fd uintptr) { tunFd = int(fd) }); err != nil {
		return nil, fmt.Errorf("tunnel: io_uring reads: %w", err)
	}
	r := &TUNRing{fd: -1, efd: -1, slots: opts.Slots, multi: opts.Multishot, tun: t}
	r.at = opts.Headroom
	r.size = (opts.Headroom + vnetHdrLen + 65535 + 63) &^ 63
	if err := r.setup(tunFd); err != nil {
		r.free()
		return nil, err
	}
	return r, nil
}

func (r *TUNRing) setup(tunFd int) error {
	entries := 1
	for entries < r.slots+2 {
		entries <<= 1
	}
	p := uringParams{flags: uringSetupSingleIssuer | uringSetupDeferTaskrun}
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return fmt.Errorf("tunnel: io_uring_setup: %w", e)
	}
	r.fd = int(fd)
	if p.features&uringFeatSingleMmap == 0 || p.features&uringFeatExtArg == 0 {
		return fmt.Errorf("tunnel: io_uring: kernel lacks IORING_FEAT_SINGLE_MMAP or EXT_ARG (features %#x)", p.features)
	}
	size := max(int(p.sqOff.array)+int(p.sqEntries)*4, int(p.cqOff.cqes)+int(p.cqEntries)*int(unsafe.Sizeof(uringCQE{})))
	var err error
	if r.ringMem, err = unix.Mmap(r.fd, uringOffSQRing, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("tunnel: io_uring: mmap rings: %w", err)
	}
	if r.sqeMem, err = unix.Mmap(r.fd, uringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(uringSQE{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("tunnel: io_uring: mmap SQEs: %w", err)
	}
	m := r.ringMem
	r.sqHead = (*uint32)(unsafe.Pointer(&m[p.sqOff.head]))
	r.sqTail = (*uint32)(unsafe.Pointer(&m[p.sqOff.tail]))
	r.sqFlags = (*uint32)(unsafe.Pointer(&m[p.sqOff.flags]))
	r.sqMask = *(*uint32)(unsafe.Pointer(&m[p.sqOff.ringMask]))
	array := unsafe.Slice((*uint32)(unsafe.Pointer(&m[p.sqOff.array])), p.sqEntries)
	for i := range array {
		array[i] = uint32(i) // SQE i sits in array slot i, always
	}
	r.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.cqHead = (*uint32)(unsafe.Pointer(&m[p.cqOff.head]))
	r.cqTail = (*uint32)(unsafe.Pointer(&m[p.cqOff.tail]))
	r.cqMask = *(*uint32)(unsafe.Pointer(&m[p.cqOff.ringMask]))
	r.cqes = unsafe.Slice((*uringCQE)(unsafe.Pointer(&m[p.cqOff.cqes])), p.cqEntries)

	files := [1]int32{int32(tunFd)}
	if _, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), uringRegisterFiles, uintptr(unsafe.Pointer(&files[0])), 1, 0, 0); e != 0 {
		return fmt.Errorf("tunnel: io_uring: register the TUN: %w", e)
	}
	if r.bufMem, err = unix.Mmap(-1, 0, r.slots*r.size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return fmt.Errorf("tunnel: io_uring: slots: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("tunnel: io_uring: eventfd: %w", err)
	}
	r.efd = efd
	s := r.sqe()
	*s = uringSQE{opcode: uringOpPollAdd, fd: int32(efd), opFlags: unix.POLLIN, userData: uringTagWake}
	r.queued++
	if r.multi {
		if err := r.setupPbuf(entries); err != nil {
			return err
		}
		r.arm()
	} else {
		for i := range r.slots {
			r.queueRead(i)
		}
	}
	if err := r.enter(false); err != nil {
		return fmt.Errorf("tunnel: io_uring: first submit: %w", err)
	}
	if r.multi && !r.armed {
		return errors.New("tunnel: io_uring: the multishot read ended at once")
	}
	return nil
}

func (r *TUNRing) setupPbuf(entries int) error {
	n := entries // a power of two at least Slots
	var err error
	if r.pbufMem, err = unix.Mmap(-1, 0, (n*16+4095)&^4095, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return fmt.Errorf("tunnel: io_uring: buffer ring: %w", err)
	}
	r.pbuf = unsafe.Slice((*uringBuf)(unsafe.Pointer(&r.pbufMem[0])), n)
	r.pbufMask = uint16(n - 1)
	reg := uringBufReg{ringAddr: uint64(uintptr(unsafe.Pointer(&r.pbufMem[0]))), ringEntries: uint32(n), bgid: uringBufGroup}
	if _, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), uringRegisterPbufRing, uintptr(unsafe.Pointer(&reg)), 1, 0, 0); e != 0 {
		return fmt.Errorf("tunnel: io_uring: register the buffer ring: %w", e)
	}
	for i := range r.slots {
		r.putBuf(i)
	}
	return nil
}

// sqe returns the next free submission entry, zeroed, and advances the
// tail (the kernel reads it at the next enter). There is always room: at
// most Slots reads, the wake poll and a cancel are ever queued.
func (r *TUNRing) sqe() *uringSQE {
	tail := atomic.LoadUint32(r.sqTail)
	s := &r.sqes[tail&r.sqMask]
	*s = uringSQE{}
	atomic.StoreUint32(r.sqTail, tail+1)
	return s
}

// queueRead queues a single-shot read into slot i.
func (r *TUNRing) queueRead(i int) {
	tail := atomic.LoadUint32(r.sqTail)
	s := &r.sqes[tail&r.sqMask]
	*s = uringSQE{opcode: uringOpRead, flags: uringSqeFixedFile, fd: 0, off: ^uint64(0),
		addr: uint64(uintptr(unsafe.Pointer(&r.bufMem[i*r.size+r.at]))), len: uint32(r.size - r.at), userData: uint64(i)}
	atomic.StoreUint32(r.sqTail, tail+1)
	r.queued++
}

// arm queues the multishot read.
func (r *TUNRing) arm() {
	tail := atomic.LoadUint32(r.sqTail)
	s := &r.sqes[tail&r.sqMask]
	*s = uringSQE{opcode: uringOpReadMultishot, flags: uringSqeFixedFile | uringSqeBufferSelect, fd: 0, off: ^uint64(0),
		bufIndex: uringBufGroup, userData: uringTagMulti}
	atomic.StoreUint32(r.sqTail, tail+1)
	r.armed = true
	r.queued++
}

// putBuf gives slot i back to the provided-buffer ring.
func (r *TUNRing) putBuf(i int) {
	tail := r.pbufTail
	b := &r.pbuf[tail&r.pbufMask]
	b.addr = uint64(uintptr(unsafe.Pointer(&r.bufMem[i*r.size+r.at])))
	b.len = uint32(r.size - r.at)
	b.bid = uint16(i)
	r.pbufTail = tail + 1
	// The tail is the upper half of the 32-bit word that entry 0's bid
	// starts (struct io_uring_buf_ring): sync/atomic has no 16-bit
	// store, so the release store is of that word, entry 0's bid (which
	// only we write) unchanged.
	first := &r.pbuf[0]
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&first.bid)), uint32(first.bid)|uint32(r.pbufTail)<<16)
}

// enter submits the queued entries and runs the completions' task work;
// with wait it sleeps until at least one completion is posted.
func (r *TUNRing) enter(wait bool) error {
	for {
		submit := atomic.LoadUint32(r.sqTail) - atomic.LoadUint32(r.sqHead)
		var e unix.Errno
		if wait {
			_, _, e = unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(submit), 1, uringEnterGetEvents, 0, 0)
		} else {
			_, _, e = unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(submit), 0, uringEnterGetEvents, 0, 0)
		}
		switch e {
		case 0:
			return nil
		case unix.EINTR:
			if wait && atomic.LoadUint32(r.cqHead) != atomic.LoadUint32(r.cqTail) {
				return nil
			}
			continue
		case unix.EAGAIN, unix.EBUSY:
			// The CQ is full of completions not yet reaped: reap first.
			return nil
		}
		return os.NewSyscallError("io_uring_enter", e)
	}
}

// Read returns the next packet read: its slot and its length (the
// virtio-net header and the packet, at Headroom in Slot(slot)). With wait
// it sleeps until one comes; without, n is 0 when none has. The slot is
// the caller's until Release. After Close, Read reports os.ErrClosed.
func (r *TUNRing) Read(wait bool) (slot, n int, err error) {
	for tries := 0; ; tries++ {
		if r.freed || r.closed.Load() {
			return 0, 0, os.ErrClosed
		}
		head := atomic.LoadUint32(r.cqHead)
		if head != atomic.LoadUint32(r.cqTail) {
			c := r.cqes[head&r.cqMask]
			atomic.StoreUint32(r.cqHead, head+1)
			slot, n, ok, err := r.complete(c)
			if ok || err != nil {
				return slot, n, err
			}
			continue
		}
		if !wait && tries > 0 {
			return 0, 0, nil
		}
		if r.multi && !r.armed {
			r.arm()
		}
		if err := r.enter(wait); err != nil {
			return 0, 0, err
		}
	}
}

// complete takes one completion; ok reports a packet in slot.
func (r *TUNRing) complete(c uringCQE) (slot, n int, ok bool, err error) {
	switch c.userData {
	case uringTagWake:
		r.queued--
		return 0, 0, false, os.ErrClosed
	case uringTagCancel:
		return 0, 0, false, nil
	case uringTagMulti:
		if c.flags&uringCqeFMore == 0 {
			r.armed = false
			r.queued--
		}
		if c.flags&uringCqeFBuffer != 0 {
			slot = int(c.flags >> uringCqeBufferShft)
			if c.res <= 0 {
				r.putBuf(slot)
				return 0, 0, false, nil
			}
			return slot, int(c.res), true, nil
		}
		if c.res == -int32(unix.EAGAIN) {
			return 0, 0, false, r.eagain()
		}
		if c.res < 0 && c.res != -int32(unix.ENOBUFS) && c.res != -int32(unix.ECANCELED) {
			return 0, 0, false, rawErr(nil, unix.Errno(-c.res), "io_uring read")
		}
		return 0, 0, false, nil
	}
	r.queued--
	slot = int(c.userData)
	if c.res <= 0 {
		if c.res == -int32(unix.ECANCELED) || r.closed.Load() {
			return 0, 0, false, nil
		}
		if c.res == -int32(unix.EAGAIN) {
			if err := r.eagain(); err != nil {
				return 0, 0, false, err
			}
		}
		r.queueRead(slot)
		if c.res < 0 && c.res != -int32(unix.EAGAIN) && c.res != -int32(unix.EINTR) {
			return 0, 0, false, rawErr(nil, unix.Errno(-c.res), "io_uring read")
		}
		return 0, 0, false, nil
	}
	return slot, int(c.res), true, nil
}

// eagain clears O_NONBLOCK on the TUN after a read completed with
// -EAGAIN (see TUNRing), once.
func (r *TUNRing) eagain() error {
	r.EAGAINs++
	if r.blocking {
		return nil
	}
	var ferr error
	if err := r.tun.raw.Control(func(fd uintptr) { ferr = unix.SetNonblock(int(fd), false) }); err != nil {
		return rawErr(err, 0, "io_uring read")
	}
	if ferr != nil {
		return fmt.Errorf("tunnel: io_uring reads: clear O_NONBLOCK on the TUN: %w", ferr)
	}
	r.blocking = true
	return nil
}

// Slot returns slot i: Headroom bytes, then what the read put there.
func (r *TUNRing) Slot(i int) []byte {
	return r.bufMem[i*r.size : (i+1)*r.size : (i+1)*r.size]
}

// Release gives slot i back for another read: queued for the next
// io_uring_enter (single-shot), or put back on the buffer ring.
func (r *TUNRing) Release(i int) {
	if r.freed || r.closed.Load() {
		return
	}
	if r.multi {
		r.putBuf(i)
		return
	}
	r.queueRead(i)
}

// Close makes a waiting or later Read report os.ErrClosed. Safe from any
// goroutine; the reader still calls Free.
func (r *TUNRing) Close() error {
	var err error
	r.once.Do(func() {
		r.closed.Store(true)
		one := [8]byte{1}
		if _, werr := unix.Write(r.efd, one[:]); werr != nil {
			err = fmt.Errorf("tunnel: io_uring: wake: %w", werr)
		}
	})
	return err
}

// Free cancels the queued reads, waits (at most a second) for their
// completions, and releases the ring, its reference to the TUN, and the
// slots. The reading
// goroutine calls it, once it no longer reads.
func (r *TUNRing) Free() {
	if r.freed {
		return
	}
	r.closed.Store(true)
	r.free()
}

func (r *TUNRing) free() {
	if r.fd >= 0 && r.sqes != nil && r.queued > 0 {
		s := r.sqe()
		*s = uringSQE{opcode: uringOpAsyncCancel, fd: -1, opFlags: uringCancelAll | uringCancelAny, userData: uringTagCancel}
		ts := unix.NsecToTimespec(10 * 1e6)
		arg := uringGetEventsArg{ts: uint64(uintptr(unsafe.Pointer(&ts)))}
		for tries := 0; tries < 100 && r.queued > 0; tries++ {
			submit := atomic.LoadUint32(r.sqTail) - atomic.LoadUint32(r.sqHead)
			unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(submit), 1, uringEnterGetEvents|uringEnterExtArg,
				uintptr(unsafe.Pointer(&arg)), unsafe.Sizeof(arg))
			for head := atomic.LoadUint32(r.cqHead); head != atomic.LoadUint32(r.cqTail); head++ {
				c := r.cqes[head&r.cqMask]
				atomic.StoreUint32(r.cqHead, head+1)
				switch {
				case c.userData == uringTagCancel:
				case c.userData == uringTagMulti && c.flags&uringCqeFMore != 0:
				default:
					r.queued--
				}
			}
		}
	}
	r.freed = true
	if r.fd >= 0 {
		// The ring's own reference to the TUN goes now, with no request
		// left that holds it: closing the ring would drop it only from
		// the ring's asynchronous exit work, and the TUN would outlive
		// its process for a moment (a relay started next with the same
		// TUN name would find the old device).
		unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), uringUnregisterFiles, 0, 0, 0, 0)
		unix.Close(r.fd)
		r.fd = -1
	}
	for _, m := range []*[]byte{&r.ringMem, &r.sqeMem, &r.pbufMem} {
		if *m != nil {
			unix.Munmap(*m)
			*m = nil
		}
	}
	if r.queued == 0 && r.bufMem != nil {
		// With reads still queued (a cancellation the kernel did not
		// confirm in time) the slots stay mapped: the kernel may yet
		// write them.
		unix.Munmap(r.bufMem)
		r.bufMem = nil
	}
	r.sqes, r.cqes, r.pbuf = nil, nil, nil
	if r.efd >= 0 {
		// Close may still write it: leave that to the closed flag's
		// order (Close writes before Free closes only if it ran first).
		r.once.Do(func() {})
		unix.Close(r.efd)
		r.efd = -1
	}
}
