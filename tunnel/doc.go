// Package tunnel is the overlay's userspace VXLAN datapath: it moves pod
// packets between a TUN device and a UDP socket (port 8472) in the framing
// of flannel's kernel vxlan backend (RFC 7348, package encap), as fast as
// the machine allows.
//
// # Boundaries
//
// Device (the TUN) and Conn (the UDP socket) are small batched interfaces;
// OpenTUN and ListenUDP return the real ones, package tunneltest has
// channel-backed fakes. A Tunnel joins a Device and a Conn through a
// routes.Table and runs two pumps, one per direction.
//
// # Design notes
//
// Offloads. The offload TUN (a device opened with IFF_VNET_HDR and
// TUNSETOFFLOAD, wrapped by golang.zx2c4.com/wireguard/tun) lets the kernel
// hand us TCP (and UDP) super-packets of up to 64 KiB, and take coalesced
// super-packets back. The UDP side mirrors it: UDP_SEGMENT sends a run of
// VXLAN frames to one peer as a single system call, and UDP_GRO receives a
// run of datagrams from one sender in a single 64 KiB buffer. So a bulk TCP
// transfer costs a handful of system calls per 64 KiB each way, where a
// naive loop pays two per 1.4 KiB packet. Where the kernel lacks an offload
// each side falls back on its own: plain TUN (water), sendmmsg without
// segmentation (and GSO is switched off for good if a segmented send fails
// with EIO), recvmmsg without coalescing. Stats and the start-up log say
// which are active.
//
// Scatter-gather. With the Linux offload TUN neither direction copies a
// payload in userspace. Out (gso.go): the out pump reads each packet with
// its virtio-net header straight into a slab; a GSO super-packet is not
// split into buffers but sent as one UDP_SEGMENT message whose iovec list
// alternates a small per-segment header block (VXLAN, Ethernet, IP and
// TCP/UDP headers with that segment's lengths, IPv4 ID, sequence number,
// flags and checksums, as TSO would write them) with the segment's payload
// where it lies; the kernel cuts the concatenation every gso_size bytes
// (WriteMessage.Segment). Packets without GSO are encapsulated in place;
// a checksum the kernel left partial (NEEDS_CSUM) is completed. In (gro.go):
// consecutive TCP segments (or equal-size UDP datagrams) of one flow in the
// receive buffers are written to the TUN as one GSO super-packet with one
// writev, whose iovec list is the virtio-net header and the first
// packet's rewritten headers followed by every packet's payload in the
// receive buffer; everything else goes alone behind a GSO_NONE header.
// Each payload is read once, for its checksum: computed on the way out,
// verified on the way in (the kernel trusts a NEEDS_CSUM super-packet, so
// a corrupt segment must never join one). Other devices (plain, fakes) use
// Device.Read and Device.Write.
//
// Headroom. The out pump reads every packet at offset encap.Headroom, so the
// VXLAN and inner Ethernet headers are written in place in front of it;
// outer IP and UDP headers are the kernel's. The in pump validates each
// frame with encap.Decap and writes the inner packet from where it lies.
//
// Source ports. One socket on port 8472 receives; the flow hash picks one of
// a few sending sockets on ephemeral ports, so each inner flow keeps one
// outer source port and flows spread over ECMP paths and receive queues, as
// RFC 7348 asks and as a kernel VTEP does (see ListenUDP).
//
// Grouping. The out pump groups a batch by (peer, flow) in packet order, so
// each group is one message to WriteBatch and, when its frames are of one
// size, one GSO send.
//
// No locks, no allocation. The pumps read the peer table through an atomic
// snapshot loaded once per batch; every buffer, message and mmsghdr is
// allocated once when the pump starts and reused (the Linux Conn does its
// own recvmmsg/sendmmsg for that reason, see conn_linux.go). Counters are
// atomics, added once per group or run rather than per packet; per-peer ones
// live in the peer table so they survive table updates. (The plain TUN's
// Write takes an uncontended mutex: the in pump and the out pump's ICMP
// answers both write through it.)
//
// System calls. The pumps' reads and writes (recvmmsg, sendmmsg, and the
// TUN's read, write and writev) are RawSyscalls on non-blocking
// descriptors: they never block, EAGAIN parks the goroutine in the runtime
// poller, and the scheduler never hands a pump's P to another thread in the
// middle of a call, which cost a needless thread wake-up per packet and
// half the round-trip time (conn_linux.go has the figures). The naive mode
// keeps the ordinary calls.
//
// Drops. Packets to no lease (DropNoRoute), to our own subnet (DropLoop: the
// kernel should have delivered them, sending them would loop) and above the
// overlay MTU (DropTooBig) are dropped and counted by reason. An oversized
// IPv4 packet with DF set is answered with ICMP "fragmentation needed"
// carrying the overlay MTU, an IPv6 one with ICMPv6 "packet too big", from
// our subnet's overlay address and rate limited, so path MTU discovery
// works. Received frames are dropped by encap's reasons.
//
// Lifecycle. Run starts the two pumps and a watcher of its context, and
// returns only when all three have exited; Close (idempotent) closes the
// device and the socket, which unblocks the pumps' reads.
//
// Naive mode (Options.Naive, with a plain TUN and a socket without
// offloads) moves one packet per read and per send: the shape of flannel's
// old udp backend, kept as the benchmarks' floor.
package tunnel
