package tunnel

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The own poller (TUNOptions.OwnPoller, UDPOptions.OwnPoller): the issue-14
// lever "an own epoll loop per pump on a locked OS thread instead of the
// runtime poller".
//
// By default a pump whose raw call finds its descriptor not ready
// (EAGAIN) parks its goroutine in the runtime poller (RawConn.Read and
// Write): the thread that blocks in the runtime's epoll_wait is whichever
// has nothing else to run, and the goroutine the wake readies may run on
// another thread than the one the kernel woke. With the own poller, the
// pump's goroutine stays on its OS thread (the Tunnel and the floor lock
// it) and that thread sleeps in an epoll instance of its own that holds
// just the one descriptor, level-triggered: the kernel wakes exactly the
// thread that will do the work, with no scheduler in between.
//
// A waiter is that epoll instance. The try goes through RawConn.Control,
// which gives the descriptor (holding a reference on it for the callback)
// without parking; on EAGAIN the pump calls waiter.wait outside the
// callback, so that closing the descriptor never waits for a sleeping
// pump, and tries again. epoll_wait is made with unix.EpollWait, an
// ordinary Syscall, so the runtime may hand the thread's P to other work
// while it sleeps. The descriptor stays registered with the runtime poller
// as well (edge-triggered there, with no goroutine parked on it).
//
// Shutdown: every waiter of one device or socket set shares a closer, an
// eventfd registered in each waiter's epoll instance. Closing writes it
// once and never reads it, so every wait, present or future, returns at
// once (level-triggered) with net.ErrClosed; the closer then takes each
// waiter's lock, which a pump holds only while it waits, before closing the
// epoll descriptor, so no pump ever waits on a closed (or reused) number.

// closerData marks the closer's eventfd in a waiter's events.
const closerData = -1

// closer is the shutdown signal of a device's or socket set's waiters.
type closer struct {
	efd     int
	closed  atomic.Bool
	mu      sync.Mutex // guards waiters and done
	waiters []*waiter
	done    bool
}

func newCloser() (*closer, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, os.NewSyscallError("eventfd", err)
	}
	return &closer{efd: efd}, nil
}

// waiter is one pump's epoll instance on one descriptor.
type waiter struct {
	c    *closer
	mu   sync.Mutex // held by the pump while it sleeps in epoll_wait
	epfd int
	ev   [2]unix.EpollEvent
}

// add returns a waiter for raw's descriptor, for events (unix.EPOLLIN or
// unix.EPOLLOUT).
func (c *closer) add(raw syscall.RawConn, events uint32) (*waiter, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	w := &waiter{c: c, epfd: epfd}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, c.efd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: closerData}); err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cerr = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, int(fd), &unix.EpollEvent{Events: events, Fd: int32(fd)})
	}); err != nil {
		unix.Close(epfd)
		return nil, err
	}
	if cerr != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("epoll_ctl", cerr)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		unix.Close(epfd)
		return nil, net.ErrClosed
	}
	c.waiters = append(c.waiters, w)
	return w, nil
}

// close wakes every waiter, now and for good, and releases the epoll
// instances and the eventfd. It returns once no pump sleeps in them; it
// does not close the descriptors waited on.
func (c *closer) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return nil
	}
	c.done = true
	c.closed.Store(true)
	var one [8]byte
	*(*uint64)(unsafe.Pointer(&one[0])) = 1
	var errs []error
	if _, err := unix.Write(c.efd, one[:]); err != nil {
		errs = append(errs, os.NewSyscallError("eventfd write", err))
	}
	for _, w := range c.waiters {
		w.mu.Lock()
		if err := unix.Close(w.epfd); err != nil {
			errs = append(errs, os.NewSyscallError("close epoll", err))
		}
		w.epfd = -1
		w.mu.Unlock()
	}
	c.waiters = nil
	if err := unix.Close(c.efd); err != nil {
		errs = append(errs, os.NewSyscallError("close eventfd", err))
	}
	return errors.Join(errs...)
}

// wait sleeps until the descriptor is ready (or the kernel reports an
// error or hang-up on it, which the next try will see) and returns nil, or
// until the closer closes and returns net.ErrClosed.
func (w *waiter) wait() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		if w.c.closed.Load() {
			return net.ErrClosed
		}
		n, err := unix.EpollWait(w.epfd, w.ev[:], -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("epoll_wait", err)
		}
		ready := false
		for i := range n {
			if w.ev[i].Fd == closerData {
				return net.ErrClosed
			}
			ready = true
		}
		if ready {
			return nil
		}
	}
}

// ownCall is a raw call made through RawConn.Control, waiting in a waiter
// between tries: fn is the same callback RawConn.Read or Write would take
// (false: not ready, try again once ready). ctl is o.control, bound once.
type ownCall struct {
	fn   func(fd uintptr) bool
	w    *waiter
	ctl  func(fd uintptr)
	done bool
}

func newOwnCall(fn func(fd uintptr) bool, w *waiter) *ownCall {
	o := &ownCall{fn: fn, w: w}
	o.ctl = o.control
	return o
}

func (o *ownCall) control(fd uintptr) { o.done = o.fn(fd) }

// run calls fn on raw's descriptor until it is done.
func (o *ownCall) run(raw syscall.RawConn) error {
	for {
		o.done = false
		if err := raw.Control(o.ctl); err != nil {
			return err
		}
		if o.done {
			return nil
		}
		if err := o.w.wait(); err != nil {
			return err
		}
	}
}

// errOwnPollerNeedsOffload: the own poller drives offload-mode TUNs only.
var errOwnPollerNeedsOffload = fmt.Errorf("tunnel: the own poller needs an offloading TUN (%w)", errNoOffload)
