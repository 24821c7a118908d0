package tunnel

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The batch system calls are written here on golang.org/x/sys/unix rather
// than taken from golang.org/x/net/ipv4's ReadBatch/WriteBatch: that API
// allocates a *net.UDPAddr for every datagram it receives (and takes
// net.Addr interfaces on send), which would put an allocation per packet on
// the hot path, and it has no way to pass the UDP_SEGMENT control message
// per message without building it anew for every call. Here every mmsghdr,
// iovec, sockaddr and control buffer is allocated once per Conn and reused,
// and the calls go through syscall.RawConn so the runtime poller still parks
// the goroutine while the socket is not ready.
//
// The pumps' system calls (recvmmsg and sendmmsg here, the TUN's read,
// write and writev in device_linux.go) are made with RawSyscall, which does not
// tell the scheduler the goroutine entered the kernel. They never block:
// the sockets and the TUN are non-blocking, and recvmmsg and sendmmsg say
// MSG_DONTWAIT besides; "not ready" comes back as EAGAIN and parks the
// goroutine in the poller. With Syscall, a call that lasts past a tick of
// the runtime's monitor thread (a sendmmsg that carries 64 KiB through the
// veth, a TUN writev that delivers a super-packet up the stack) has its P
// taken away and handed to another thread, which must be woken and then
// goes back to sleep: measured with bin/overlay-bench --overlay-b (same
// run, 5 interleaved repetitions), RawSyscall took the round trip p50 from
// 185 to 99 µs, 64-byte packets from 78 k to 93 k/s, and the agents' CPU
// during bulk TCP from 1.39 to 1.26 cores (tunnel/BENCHMARKS.md). A naive
// socket (UDPOptions.Naive) keeps the ordinary Syscall, as the floor it
// stands for would.

const (
	// connBatch is the number of mmsghdrs per direction.
	connBatch = 128
)

var (
	// segCmsgSpace is the room for one UDP_SEGMENT control message (a
	// uint16 segment size).
	segCmsgSpace = unix.CmsgSpace(2)
	// groCmsgSpace is the room for the UDP_GRO control message (an int
	// segment size), with slack for one more message the kernel may add.
	groCmsgSpace = 2 * unix.CmsgSpace(8)
)

type udpConn struct {
	rx    *net.UDPConn
	rxRaw syscall.RawConn
	// With checksum steering (steer_linux.go), rxSum receives the
	// datagrams that carry an outer UDP checksum, and rx only those that
	// do not.
	rxSum    *net.UDPConn
	rxSumRaw syscall.RawConn
	tx       []*net.UDPConn
	txRaw    []syscall.RawConn
	is6      bool
	local    netip.AddrPort
	gro      bool
	gso      atomic.Bool
	log      *slog.Logger
	once     closeOnce
	// With the own poller (epoll_linux.go): the closer of the socket
	// set's waiters, one per receiving socket (in r and rSum) and one
	// per sending socket (txOwn, used by WriteBatch's goroutine).
	poll  *closer
	txOwn []*ownCall

	r    recvState // owned by the goroutine in ReadBatch
	rSum recvState // owned by the goroutine in readChecksummed
	w    sendState // owned by the goroutine in WriteBatch
}

var _ Conn = (*udpConn)(nil)

// ListenUDP opens the VXLAN socket on opts.Addr, and opts.SourcePorts
// sending sockets on ephemeral ports of the same address. UDP GRO and GSO are
// turned on where the kernel has them (Linux 5.0 and 4.18) unless disabled;
// GRO() and GSO() say which are active.
//
// Why separate sending sockets: a UDP socket has one source port, and RFC
// 7348 wants the outer source port to carry the inner flow's entropy, as a
// kernel VTEP's does. Picking among a few sockets by flow hash gives each
// flow a stable source port without raw sockets (which would need
// CAP_NET_RAW and lose GSO). Receivers accept any source port.
func ListenUDP(opts UDPOptions) (Conn, error) {
	addr := opts.Addr
	if !addr.Addr().IsValid() {
		addr = netip.AddrPortFrom(netip.IPv4Unspecified(), DefaultPort)
	}
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	nsrc := opts.SourcePorts
	if nsrc == 0 {
		nsrc = DefaultSourcePorts
	}
	if nsrc < 0 || nsrc > MaxSourcePorts {
		return nil, fmt.Errorf("tunnel: %d source ports out of range (1-%d)", nsrc, MaxSourcePorts)
	}
	bufSize := opts.SocketBuffer
	if bufSize == 0 {
		bufSize = DefaultSocketBuffer
	}
	if bufSize < 0 {
		return nil, fmt.Errorf("tunnel: socket buffer size %d is negative", bufSize)
	}
	network := "udp4"
	if addr.Addr().Is6() {
		network = "udp6"
	}
	if opts.Naive {
		opts.DisableGSO, opts.DisableGRO, opts.OwnPoller = true, true, false
	}
	c := &udpConn{is6: addr.Addr().Is6(), log: opts.Logger}
	if c.log == nil {
		c.log = slog.Default()
	}
	var err error
	steer := opts.SteerChecksums && !opts.Naive
	if c.rx, c.rxRaw, err = listenRx(network, addr, steer); err != nil {
		return nil, err
	}
	c.local = c.rx.LocalAddr().(*net.UDPAddr).AddrPort()
	if err := setBuffer(c.rxRaw, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, bufSize); err != nil {
		c.Close()
		return nil, fmt.Errorf("tunnel: UDP %v receive buffer: %w", addr, err)
	}
	if !opts.DisableGRO {
		c.gro = setsockopt(c.rxRaw, unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
	}
	if steer {
		if err := c.steer(network, bufSize); err != nil {
			// Not fatal: one socket receives everything, and every
			// inner checksum is verified.
			c.log.Warn("UDP checksum steering unavailable; verifying every inner checksum", "err", err)
		}
	}
	src := netip.AddrPortFrom(addr.Addr(), 0)
	for range nsrc {
		tx, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(src))
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("tunnel: open sending socket on %v: %w", src, err)
		}
		c.tx = append(c.tx, tx)
		raw, err := tx.SyscallConn()
		if err != nil {
			c.Close()
			return nil, err
		}
		c.txRaw = append(c.txRaw, raw)
		if err := setBuffer(raw, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, bufSize); err != nil {
			c.Close()
			return nil, fmt.Errorf("tunnel: UDP send buffer: %w", err)
		}
	}
	if !opts.DisableGSO {
		// Reading UDP_SEGMENT back succeeds exactly where the kernel
		// understands it.
		_, err := getsockopt(c.txRaw[0], unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		c.gso.Store(err == nil)
	}
	sys := unix.RawSyscall6
	if opts.Naive {
		sys = unix.Syscall6
	}
	c.r.init(c.gro, sys)
	if c.rxSum != nil {
		c.rSum.init(c.gro, sys)
		c.rSum.checksummed = true
	}
	c.w.init(sys)
	if opts.OwnPoller {
		if err := c.ownPoller(); err != nil {
			c.Close()
			return nil, fmt.Errorf("tunnel: UDP %v own poller: %w", addr, err)
		}
	}
	return c, nil
}

// ownPoller makes every socket wait in a waiter of its own instead of the
// runtime poller (epoll_linux.go).
func (c *udpConn) ownPoller() error {
	var err error
	if c.poll, err = newCloser(); err != nil {
		return err
	}
	w, err := c.poll.add(c.rxRaw, unix.EPOLLIN)
	if err != nil {
		return err
	}
	c.r.own = newOwnCall(c.r.fn, w)
	if c.rxSum != nil {
		if w, err = c.poll.add(c.rxSumRaw, unix.EPOLLIN); err != nil {
			return err
		}
		c.rSum.own = newOwnCall(c.rSum.fn, w)
	}
	for _, raw := range c.txRaw {
		if w, err = c.poll.add(raw, unix.EPOLLOUT); err != nil {
			return err
		}
		c.txOwn = append(c.txOwn, newOwnCall(c.w.fn, w))
	}
	return nil
}

func (c *udpConn) ownPolled() bool { return c.poll != nil }

func setsockopt(raw syscall.RawConn, level, opt, v int) error {
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }); err != nil {
		return err
	}
	return serr
}

func getsockopt(raw syscall.RawConn, level, opt int) (int, error) {
	var v int
	var serr error
	if err := raw.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		return 0, err
	}
	return v, serr
}

// setBuffer asks for a socket buffer of size bytes, past net.core.rmem_max
// and wmem_max with the FORCE option when we have CAP_NET_ADMIN, else up to
// those limits.
func setBuffer(raw syscall.RawConn, force, plain, size int) error {
	if setsockopt(raw, unix.SOL_SOCKET, force, size) == nil {
		return nil
	}
	return setsockopt(raw, unix.SOL_SOCKET, plain, size)
}

func (c *udpConn) BatchSize() int            { return connBatch }
func (c *udpConn) GSO() bool                 { return c.gso.Load() }
func (c *udpConn) GRO() bool                 { return c.gro }
func (c *udpConn) LocalAddr() netip.AddrPort { return c.local }

func (c *udpConn) Close() error {
	return c.once.do(func() error {
		var errs []error
		if c.poll != nil {
			// Wake the pumps sleeping in the own poller first.
			errs = append(errs, c.poll.close())
		}
		if c.rx != nil {
			errs = append(errs, c.rx.Close())
		}
		if c.rxSum != nil {
			errs = append(errs, c.rxSum.Close())
		}
		for _, tx := range c.tx {
			errs = append(errs, tx.Close())
		}
		return errors.Join(errs...)
	})
}

// recvState is the preallocated recvmmsg state.
type recvState struct {
	sys   syscall6 // the system call entry: raw unless naive
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	oob   []byte
	oobN  int // control space per slot, 0 without GRO
	// checksummed: every datagram this socket receives carried an outer
	// checksum, which the kernel verified (rxSum).
	checksummed bool
	n           int // slots offered to the call
	got         int
	errno       unix.Errno
	fn          func(fd uintptr) bool // r.recv, bound once so calls do not allocate
	own         *ownCall              // with the own poller: fn through its waiter
}

// syscall6 is the signature of unix.RawSyscall6 and unix.Syscall6.
type syscall6 func(trap, a1, a2, a3, a4, a5, a6 uintptr) (r1, r2 uintptr, err unix.Errno)

func (r *recvState) init(gro bool, sys syscall6) {
	r.sys = sys
	r.hdrs = make([]unix.Mmsghdr, connBatch)
	r.iovs = make([]unix.Iovec, connBatch)
	r.names = make([]unix.RawSockaddrInet6, connBatch)
	if gro {
		r.oobN = groCmsgSpace
		r.oob = make([]byte, connBatch*r.oobN)
	}
	r.fn = r.recv
}

func (r *recvState) recv(fd uintptr) bool {
	for {
		n, _, errno := r.sys(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(r.n), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // park in the poller until readable
		}
		r.errno, r.got = errno, int(n)
		return true
	}
}

func (c *udpConn) ReadBatch(msgs []ReadMessage) (int, error) {
	return c.read(c.rxRaw, &c.r, msgs)
}

// read is ReadBatch on one receiving socket, raw, with its state r.
func (c *udpConn) read(raw syscall.RawConn, r *recvState, msgs []ReadMessage) (int, error) {
	n := min(len(msgs), len(r.hdrs))
	if n == 0 {
		return 0, nil
	}
	for i := range n {
		b := msgs[i].Buf
		if len(b) == 0 {
			return 0, fmt.Errorf("tunnel: ReadBatch slot %d has an empty buffer", i)
		}
		r.iovs[i].Base = &b[0]
		r.iovs[i].SetLen(len(b))
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		if r.oobN > 0 {
			h.Control = &r.oob[i*r.oobN]
			h.SetControllen(r.oobN)
		}
		h.Flags = 0
		r.hdrs[i].Len = 0
	}
	r.n, r.got, r.errno = n, 0, 0
	var err error
	if r.own != nil {
		err = r.own.run(raw)
	} else {
		err = raw.Read(r.fn)
	}
	if err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, os.NewSyscallError("recvmmsg", r.errno)
	}
	for i := range r.got {
		m := &msgs[i]
		h := &r.hdrs[i]
		m.N = int(h.Len)
		m.Segment = m.N
		m.Truncated = h.Hdr.Flags&unix.MSG_TRUNC != 0
		m.Checksummed = r.checksummed
		m.Addr = sockaddrToAddrPort(&r.names[i])
		if r.oobN > 0 {
			if seg := groSegment(r.oob[i*r.oobN : i*r.oobN+int(h.Hdr.Controllen)]); seg > 0 && seg < m.N {
				m.Segment = seg
			}
		}
	}
	return r.got, nil
}

// groSegment returns the segment size of a UDP_GRO control message, or 0.
func groSegment(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return 0
		}
		data := oob[unix.CmsgLen(0):l]
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO {
			switch {
			case len(data) >= 4:
				return int(*(*int32)(unsafe.Pointer(&data[0])))
			case len(data) >= 2:
				return int(*(*uint16)(unsafe.Pointer(&data[0])))
			}
			return 0
		}
		next := unix.CmsgSpace(len(data))
		if next > len(oob) {
			return 0
		}
		oob = oob[next:]
	}
	return 0
}

func sockaddrToAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), uint16(p[0])<<8|uint16(p[1]))
	case unix.AF_INET6:
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(p[0])<<8|uint16(p[1]))
	}
	return netip.AddrPort{}
}

// putSockaddr encodes ap for a socket of our family and returns its
// length, or 0 if ap cannot be reached from it.
func (c *udpConn) putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort) uint32 {
	a := ap.Addr()
	if !c.is6 {
		a = a.Unmap()
		if !a.Is4() {
			return 0
		}
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		sa4.Family = unix.AF_INET
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
		sa4.Addr = a.As4()
		sa4.Zero = [8]uint8{}
		return unix.SizeofSockaddrInet4
	}
	if a.Is4() {
		return 0 // udp6 sockets are IPV6_V6ONLY
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.As16()}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	return unix.SizeofSockaddrInet6
}

// sockFor picks the sending socket for a flow hash (multiply-shift, no
// division).
func (c *udpConn) sockFor(flow uint32) int {
	return int(uint64(flow) * uint64(len(c.tx)) >> 32)
}

// sendState is the preallocated sendmmsg state.
type sendState struct {
	sys   syscall6 // the system call entry: raw unless naive
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	oob   []byte
	refs  []sendRef
	// Arguments and results of one sendmmsg call.
	start, end int
	sent       int
	errno      unix.Errno
	fn         func(fd uintptr) bool // w.send, bound once
}

// sendRef says which frames an mmsghdr carries.
type sendRef struct {
	msg, frame, count int
}

// cursor is a position in a WriteBatch: a message and a frame in it.
type cursor struct{ msg, frame int }

func (w *sendState) init(sys syscall6) {
	w.sys = sys
	w.hdrs = make([]unix.Mmsghdr, connBatch)
	w.iovs = make([]unix.Iovec, 8*connBatch)
	w.names = make([]unix.RawSockaddrInet6, connBatch)
	w.oob = make([]byte, connBatch*segCmsgSpace)
	w.refs = make([]sendRef, connBatch)
	w.fn = w.send
}

func (w *sendState) send(fd uintptr) bool {
	for {
		n, _, errno := w.sys(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.hdrs[w.start])), uintptr(w.end-w.start), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // park in the poller until writable
		}
		w.errno, w.sent = errno, int(n)
		return true
	}
}

// errAddrFamily reports a peer address of the other IP family than the
// underlay socket.
var errAddrFamily = errors.New("peer address family differs from the underlay socket's")

func (c *udpConn) WriteBatch(msgs []WriteMessage) error {
	for i := range msgs {
		msgs[i].Sent = 0
	}
	var first error
	var done uint64 // sockets already handled, by index (at most 64)
	for i := range msgs {
		s := c.sockFor(msgs[i].Flow)
		if done&(1<<s) != 0 {
			continue
		}
		done |= 1 << s
		if err := c.writeSocket(s, msgs, i); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			if first == nil {
				first = err
			}
		}
	}
	return first
}

// writeSocket sends, from socket s, every message from msgs[from:] that
// maps to s.
func (c *udpConn) writeSocket(s int, msgs []WriteMessage, from int) error {
	w := &c.w
	var first error
	cur := cursor{msg: from}
	for {
		nh, next, perr := c.pack(s, msgs, cur)
		if perr != nil && first == nil {
			first = perr
		}
		if nh == 0 {
			return first
		}
		for h := 0; h < nh; {
			w.start, w.end, w.sent, w.errno = h, nh, 0, 0
			var err error
			if c.txOwn != nil {
				err = c.txOwn[s].run(c.txRaw[s])
			} else {
				err = c.txRaw[s].Write(w.fn)
			}
			if err != nil {
				return err // closed
			}
			if w.errno == 0 {
				for k := h; k < h+w.sent; k++ {
					msgs[w.refs[k].msg].Sent += w.refs[k].count
				}
				h += w.sent
				continue
			}
			ref := w.refs[h]
			if w.errno == unix.EIO && ref.count > 1 && c.gso.Load() {
				// The route's device cannot checksum segmented sends
				// (udp_send_skb refuses GSO without checksum offload).
				// Turn GSO off for good and resend from this message
				// one datagram per frame.
				c.gso.Store(false)
				c.log.Warn("UDP GSO refused by the kernel (EIO); sending without it", "peer", msgs[ref.msg].Addr)
				next = cursor{ref.msg, ref.frame}
				break
			}
			if first == nil {
				first = fmt.Errorf("tunnel: send to %v: %w", msgs[ref.msg].Addr, w.errno)
			}
			h++
		}
		cur = next
	}
}

// pack fills mmsghdrs from cur onwards with the frames of messages that map
// to socket s, and returns how many it filled and where it stopped.
func (c *udpConn) pack(s int, msgs []WriteMessage, cur cursor) (int, cursor, error) {
	w := &c.w
	gso := c.gso.Load()
	nh, niov := 0, 0
	var perr error
	for cur.msg < len(msgs) && nh < len(w.hdrs) {
		m := &msgs[cur.msg]
		if cur.frame >= len(m.Frames) || c.sockFor(m.Flow) != s {
			cur = cursor{cur.msg + 1, 0}
			continue
		}
		f0 := m.Frames[cur.frame]
		if len(f0) == 0 {
			cur.frame++
			continue
		}
		namelen := c.putSockaddr(&w.names[nh], m.Addr)
		if namelen == 0 {
			if perr == nil {
				perr = fmt.Errorf("tunnel: send to %v: %w", m.Addr, errAddrFamily)
			}
			cur = cursor{cur.msg + 1, 0}
			continue
		}
		// A GSO run: frames of the segment size, the last possibly shorter.
		seg := len(f0)
		k := cur.frame + 1
		dgrams := 0 // datagrams in this mmsghdr, when pieces are not datagrams
		if m.Segment > 0 {
			seg = m.Segment
			if gso {
				k = len(m.Frames)
				dgrams = 0
				for _, f := range m.Frames[cur.frame:] {
					dgrams += len(f)
				}
				dgrams = (dgrams + seg - 1) / seg
			} else {
				// One datagram: whole pieces up to Segment bytes.
				for l := len(f0); k < len(m.Frames) && l+len(m.Frames[k]) <= seg; k++ {
					l += len(m.Frames[k])
				}
				dgrams = 1
			}
		} else if gso {
			total := seg
			for k < len(m.Frames) && k-cur.frame < maxGSOSegments && niov+k-cur.frame < len(w.iovs) {
				fl := len(m.Frames[k])
				if fl == 0 || fl > seg || total+fl > maxGSOBytes {
					break
				}
				total += fl
				k++
				if fl < seg {
					break
				}
			}
		}
		count := k - cur.frame
		if niov+count > len(w.iovs) {
			if niov == 0 {
				// Larger than the whole iovec array: a caller's bug.
				if perr == nil {
					perr = fmt.Errorf("tunnel: send to %v: %d pieces in one message", m.Addr, count)
				}
				cur = cursor{cur.msg + 1, 0}
				continue
			}
			break
		}
		for j := range count {
			f := m.Frames[cur.frame+j]
			if len(f) == 0 {
				f = f0 // an empty piece: any valid base with length 0
			}
			w.iovs[niov+j].Base = &f[0]
			w.iovs[niov+j].SetLen(len(m.Frames[cur.frame+j]))
		}
		h := &w.hdrs[nh].Hdr
		h.Name = (*byte)(unsafe.Pointer(&w.names[nh]))
		h.Namelen = namelen
		h.Iov = &w.iovs[niov]
		h.SetIovlen(count)
		h.Flags = 0
		if dgrams == 0 {
			dgrams = count
		}
		if dgrams > 1 {
			oob := w.oob[nh*segCmsgSpace : (nh+1)*segCmsgSpace]
			cm := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
			cm.Level = unix.SOL_UDP
			cm.Type = unix.UDP_SEGMENT
			cm.SetLen(unix.CmsgLen(2))
			*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = uint16(seg)
			h.Control = &oob[0]
			h.SetControllen(segCmsgSpace)
		} else {
			h.Control = nil
			h.SetControllen(0)
		}
		w.refs[nh] = sendRef{msg: cur.msg, frame: cur.frame, count: dgrams}
		nh++
		niov += count
		cur.frame = k
	}
	return nh, cur, perr
}
