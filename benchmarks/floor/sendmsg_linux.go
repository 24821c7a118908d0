package floor

import (
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"

	"overlay/tunnel"
)

// msgSender sends the super-packets' UDP_SEGMENT messages with one
// sendmsg(2) each from a socket of its own, optionally with MSG_ZEROCOPY:
// the screening of the zero-copy lever (Config.SendMsg, Config.ZeroCopy).
// Without zero copy it is the control of that A/B: the same calls, copied.
//
// With MSG_ZEROCOPY the kernel pins the pages of the iovecs and reports on
// the socket's error queue when it let go of them; until then the buffer
// must not change. send waits for that report of every send before it
// returns, so the relay may reuse its slab at once, and counts the reports
// that say the kernel copied after all (SO_EE_CODE_ZEROCOPY_COPIED, which
// is what a veth, delivering locally, does).
type msgSender struct {
	fd        int
	zc        bool
	iovs      []unix.Iovec
	oob       []byte
	name      unix.RawSockaddrInet4
	sent      uint32 // zero-copy sends made (the kernel numbers them from 0)
	done      uint32 // sends reported complete
	copied    uint64 // reports saying the data was copied
	reports   uint64
	errOOB    []byte
	errBuf    [1]byte
	pollFds   [1]unix.PollFd
	sendErrs  uint64
	fallbacks uint64 // zero-copy sends refused (ENOBUFS, EMSGSIZE) and made copied
	lastErr   unix.Errno
}

func newMsgSender(local, peer netip.AddrPort, zc bool, sockBuf int) (*msgSender, error) {
	if !local.Addr().Is4() || !peer.Addr().Is4() {
		return nil, fmt.Errorf("floor: sendmsg mode is IPv4 only")
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("floor: sendmsg socket: %w", err)
	}
	s := &msgSender{fd: fd, zc: zc, iovs: make([]unix.Iovec, 128), oob: make([]byte, unix.CmsgSpace(2)),
		errOOB: make([]byte, 128)}
	fail := func(what string, err error) (*msgSender, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("floor: sendmsg socket: %s: %w", what, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: local.Addr().As4()}); err != nil {
		return fail("bind", err)
	}
	if sockBuf == 0 {
		sockBuf = tunnel.DefaultSocketBuffer
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBuf); err != nil {
		return fail("SO_SNDBUFFORCE", err)
	}
	if zc {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ZEROCOPY, 1); err != nil {
			return fail("SO_ZEROCOPY", err)
		}
	}
	s.name.Family = unix.AF_INET
	p := (*[2]byte)(unsafe.Pointer(&s.name.Port))
	p[0], p[1] = byte(peer.Port()>>8), byte(peer.Port())
	s.name.Addr = peer.Addr().As4()
	cm := (*unix.Cmsghdr)(unsafe.Pointer(&s.oob[0]))
	cm.Level, cm.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	cm.SetLen(unix.CmsgLen(2))
	return s, nil
}

func (s *msgSender) close() error { return unix.Close(s.fd) }

// send sends one message: its frames concatenated, cut every m.Segment
// bytes.
func (s *msgSender) send(m *tunnel.WriteMessage) {
	n := 0
	for _, f := range m.Frames {
		if len(f) == 0 || n == len(s.iovs) {
			continue
		}
		s.iovs[n].Base = &f[0]
		s.iovs[n].SetLen(len(f))
		n++
	}
	*(*uint16)(unsafe.Pointer(&s.oob[unix.CmsgLen(0)])) = uint16(m.Segment)
	h := unix.Msghdr{Name: (*byte)(unsafe.Pointer(&s.name)), Namelen: unix.SizeofSockaddrInet4,
		Iov: &s.iovs[0], Control: &s.oob[0]}
	h.SetIovlen(n)
	h.SetControllen(len(s.oob))
	flags := 0
	if s.zc {
		flags = unix.MSG_ZEROCOPY
	}
	_, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&h)), uintptr(flags))
	if (e == unix.ENOBUFS || e == unix.EMSGSIZE) && s.zc {
		// Refused: the socket's option memory, which holds the pending
		// notifications, is full (ENOBUFS), or the message has more
		// pieces than an skb has page fragments (MAX_SKB_FRAGS, 17:
		// EMSGSIZE), which every scatter-gather super-packet message
		// of more than 8 segments has. Send this one copied.
		s.fallbacks++
		flags = 0
		_, _, e = unix.Syscall(unix.SYS_SENDMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&h)), 0)
	}
	clear(s.iovs[:n])
	if e != 0 {
		s.sendErrs++
		s.lastErr = e
		return
	}
	if flags == 0 {
		return
	}
	s.sent++
	s.wait()
}

// wait reads the error queue until every zero-copy send is reported
// complete.
func (s *msgSender) wait() {
	for s.done != s.sent {
		iov := unix.Iovec{Base: &s.errBuf[0]}
		iov.SetLen(1)
		h := unix.Msghdr{Iov: &iov, Control: &s.errOOB[0]}
		h.SetIovlen(1)
		h.SetControllen(len(s.errOOB))
		_, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&h)), unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if e == unix.EAGAIN {
			s.pollFds[0] = unix.PollFd{Fd: int32(s.fd)} // POLLERR is always reported
			unix.Poll(s.pollFds[:], 100)
			continue
		}
		if e != 0 {
			return
		}
		msgs, err := unix.ParseSocketControlMessage(s.errOOB[:h.Controllen])
		if err != nil {
			return
		}
		for _, cm := range msgs {
			if cm.Header.Level != unix.SOL_IP || cm.Header.Type != unix.IP_RECVERR || len(cm.Data) < int(unsafe.Sizeof(unix.SockExtendedErr{})) {
				continue
			}
			ee := (*unix.SockExtendedErr)(unsafe.Pointer(&cm.Data[0]))
			if ee.Origin != unix.SO_EE_ORIGIN_ZEROCOPY {
				continue
			}
			s.done = ee.Data + 1 // sends Info..Data are complete
			s.reports++
			if ee.Code&unix.SO_EE_CODE_ZEROCOPY_COPIED != 0 {
				s.copied++
			}
		}
	}
}
