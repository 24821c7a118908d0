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
// Offloads. The offload TUN (golang.zx2c4.com/wireguard/tun over a device
// opened with IFF_VNET_HDR and TUNSETOFFLOAD) lets the kernel hand us TCP
// super-packets of up to 64 KiB, which the driver splits into MSS-sized
// segments in one read, and lets us hand the kernel coalesced super-packets
// back. The UDP side mirrors it: UDP_SEGMENT sends a run of equal-size VXLAN
// frames to one peer as a single system call (the iovec list points at the
// frames where they lie, no copy), and UDP_GRO receives a run of datagrams
// from one sender in a single 64 KiB buffer. So a bulk TCP transfer costs a
// handful of system calls per 64 KiB each way, where a naive loop pays two
// per 1.4 KiB packet. Where the kernel lacks an offload each side falls back
// on its own: plain TUN (water), sendmmsg without segmentation (and GSO is
// switched off for good if a segmented send fails with EIO), recvmmsg
// without coalescing. Stats and the start-up log say which are active.
//
// Headroom. The out pump reads every packet at offset encap.Headroom, so the
// VXLAN and inner Ethernet headers are written in place in front of it;
// outer IP and UDP headers are the kernel's. The in pump validates each
// frame with encap.Decap and, for an offloading TUN, copies the inner packet
// into a write buffer of its own: the TUN's Write coalesces by appending to
// the first packet of a flow, so it must own buffers with spare capacity.
// One memcpy of a packet is cheap next to the system calls it saves.
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
// live in the peer table so they survive table updates.
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
