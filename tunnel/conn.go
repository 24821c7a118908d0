package tunnel

import (
	"log/slog"
	"net/netip"

	"overlay/encap"
)

// Conn is the underlay end of the overlay: a UDP socket that receives VXLAN
// datagrams in batches and sends runs of them to peers, segmenting and
// coalescing in the kernel (UDP GSO/GRO) where it can.
//
// ReadBatch and WriteBatch may be called concurrently with each other, but
// each by one goroutine at a time. Close may be called at any time.
type Conn interface {
	// ReadBatch receives up to len(msgs) datagrams into the caller's
	// msgs[i].Buf, blocking until at least one arrives, and returns how
	// many slots it filled. With GRO, one slot may hold several datagrams
	// of one sender back to back (see ReadMessage.Segment); such buffers
	// should be 64 KiB. After Close it returns an error matching
	// net.ErrClosed; any other error is for one call, and the caller reads
	// again.
	ReadBatch(msgs []ReadMessage) (int, error)

	// WriteBatch sends every frame of every message, one datagram per
	// frame, and sets msgs[i].Sent. Frames of one message leave from one
	// source port chosen by its Flow; the Conn coalesces runs of equal-size
	// frames into one GSO send when it can, and falls back to one datagram
	// per frame when the kernel refuses. It returns the first error met,
	// after trying every message; after Close, an error matching
	// net.ErrClosed. The frames are not retained after WriteBatch returns.
	WriteBatch(msgs []WriteMessage) error

	// BatchSize is the number of slots one ReadBatch fills at most, and a
	// good number of frames for one WriteBatch.
	BatchSize() int

	// GSO and GRO report whether UDP segmentation offload on send and
	// coalescing on receive are active. GSO may turn off at run time, if
	// the kernel refuses a segmented send.
	GSO() bool
	GRO() bool

	// LocalAddr is the address the socket receives on.
	LocalAddr() netip.AddrPort

	// Close closes the socket, unblocking ReadBatch. It is idempotent.
	Close() error
}

// checksummedReader is a Conn that receives datagrams carrying an outer
// UDP checksum apart from the others: ReadBatch returns only those without
// one, readChecksummed only those with one (Checksummed set).
type checksummedReader interface {
	// steered reports whether the second socket is open; if not,
	// ReadBatch receives everything and readChecksummed must not be
	// called.
	steered() bool
	readChecksummed(msgs []ReadMessage) (int, error)
}

// ReadMessage is one slot of Conn.ReadBatch.
type ReadMessage struct {
	// Buf is the caller's buffer, filled from the start.
	Buf []byte
	// N is the number of bytes received into Buf.
	N int
	// Segment is the size of each datagram in Buf[:N]: N for a single
	// datagram; with GRO, Buf[:N] holds datagrams of Segment bytes each,
	// the last possibly shorter.
	Segment int
	// Addr is the sender's address. The strict source check refuses a
	// message whose address no lease names; packets are never routed or
	// attributed to a peer by it.
	Addr netip.AddrPort
	// Truncated reports a datagram larger than Buf, cut short. The caller
	// drops it.
	Truncated bool
	// Checksummed reports that every datagram in Buf[:N] carried an outer
	// UDP checksum, which the kernel verified before delivering it: the
	// inner packets are as the sender wrote them, so their own checksums
	// need no second check. False (the safe default) when the Conn cannot
	// tell, and for datagrams sent without a checksum, as kernel VTEPs
	// send them over IPv4.
	Checksummed bool
}

// WriteMessage is a run of VXLAN frames bound for one peer.
type WriteMessage struct {
	// Frames holds one UDP payload per datagram.
	Frames [][]byte
	// Addr is the peer's underlay address and port.
	Addr netip.AddrPort
	// Flow is the flow hash of the inner packets (encap.FlowHash): every
	// message with the same Flow leaves from the same source port, so a
	// flow keeps one outer source port (RFC 7348 section 5).
	Flow uint32
	// Segment, when nonzero, makes Frames pieces of datagrams rather than
	// datagrams (scatter-gather): their concatenation is cut into
	// datagrams of Segment bytes, the last possibly shorter, as the
	// kernel's UDP_SEGMENT does. Every datagram must be made of whole
	// pieces, and one message may carry at most 64 datagrams and 65487
	// bytes, so it is one GSO send (or, without GSO, one send per
	// datagram).
	Segment int
	// Sent is set by WriteBatch to the number of datagrams sent (of
	// frames, without Segment).
	Sent int
}

// UDPOptions configure ListenUDP.
type UDPOptions struct {
	// Addr is the address to receive VXLAN on; its family is the
	// underlay's. The zero AddrPort means 0.0.0.0:8472 (DefaultPort); a
	// valid address with port 0 gets an ephemeral port, as net.ListenUDP
	// does (tests use that).
	Addr netip.AddrPort
	// SourcePorts is the number of sending sockets, each on its own
	// ephemeral port, among which the flow hash picks the outer source
	// port. Zero means DefaultSourcePorts; at most MaxSourcePorts.
	SourcePorts int
	// DisableGSO and DisableGRO turn the UDP offloads off even where the
	// kernel has them (naive mode, or to work around a broken path).
	DisableGSO, DisableGRO bool
	// Naive makes the socket calls as a straightforward Go program makes
	// them, through the scheduler's ordinary system-call path
	// (syscall.Syscall) rather than the raw calls the datapath uses; with
	// a batch of one, that is the benchmark floor of the tunnel's naive
	// mode. It implies DisableGSO and DisableGRO.
	Naive bool
	// OwnPoller makes every socket wait for readiness (recvmmsg's
	// readable, sendmmsg's writable after EAGAIN) in an epoll instance of
	// its own on the calling thread instead of the runtime poller
	// (epoll_linux.go); the Tunnel then locks its pumps to their OS
	// threads. Ignored in naive mode.
	OwnPoller bool
	// SteerChecksums opens a second receiving socket on the port and has
	// the kernel steer the datagrams that carry an outer UDP checksum to
	// it (steer_linux.go), so that a Tunnel trusts their inner checksums
	// (ReadMessage.Checksummed). ReadBatch then receives only the
	// datagrams without a checksum: it is for a Tunnel, which reads both
	// sockets. Ignored in naive mode; if the kernel refuses, one socket
	// receives everything, as without it.
	SteerChecksums bool
	// SocketBuffer is the send and receive buffer size to ask for, in
	// bytes; zero means DefaultSocketBuffer. It is forced past the system
	// limits (SO_RCVBUFFORCE) when the process may do so.
	SocketBuffer int
	// Logger receives offload fallbacks; nil means slog.Default().
	Logger *slog.Logger
}

// UDP segmentation limits, which WriteMessage.Segment messages keep to.
const (
	// maxGSOSegments is the most datagrams one UDP_SEGMENT send may carry
	// (UDP_MAX_SEGMENTS in include/linux/udp.h; 64 before Linux 6.x raised
	// it, so we keep to 64).
	maxGSOSegments = 64
	// maxGSOBytes is the most payload one segmented send may carry: the
	// total must fit one IP datagram (64 KiB less the IPv6 and UDP headers,
	// the stricter family).
	maxGSOBytes = 65535 - 40 - 8
)

// UDP defaults.
const (
	// DefaultPort is the VXLAN port flannel uses.
	DefaultPort = encap.PortLinux
	// DefaultSourcePorts gives flows eight distinct outer source ports,
	// enough to spread them over ECMP paths and receive queues.
	DefaultSourcePorts = 8
	// MaxSourcePorts bounds the sending sockets.
	MaxSourcePorts = 64
	// DefaultSocketBuffer absorbs a burst of several full batches.
	DefaultSocketBuffer = 8 << 20
)
