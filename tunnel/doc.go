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
// Checksum steering (steer_linux.go). A datagram's outer UDP checksum
// covers the inner packet, and the kernel verifies it before a socket sees
// the datagram, so where it is present the in pump does not verify the
// inner checksums again. recvmmsg cannot say which datagrams had one, so
// with UDPOptions.SteerChecksums two sockets share the port in a
// SO_REUSEPORT group and a classic BPF program sorts datagrams between
// them by the UDP checksum field: zero (or unreadable) to the first, whose
// packets are verified as before, nonzero to the second, whose
// ReadMessages say Checksummed. The Tunnel runs one in pump per socket.
// Agents send with an outer checksum, computed by the kernel in the GSO
// send (on a veth it is never computed: the skb crosses as
// CHECKSUM_PARTIAL and is trusted, which is what makes it free).
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
// Source checks (source.go). Kernel VXLAN, and so flannel, accepts any
// well-formed frame on port 8472: whoever reaches the port can put packets
// with any source address into every pod. The in pump admits a frame only
// from a lease holder, and a packet only with a source address that holder
// owns, the way WireGuard ties a peer to its allowed IPs
// (Options.SourceCheck, SourceCheckStrict by default):
//
//   - The outer source address of each received message must be one a
//     current lease names: its PublicIP (which is where flannel writes a
//     public-ip-overwrite) or its PublicIPv6. Otherwise every datagram in
//     the message is dropped as DropUnknownSource, before any parsing. A
//     GRO message is a run of datagrams from one sender, so the check is
//     made once per message, not per datagram.
//   - Each inner packet's source address must be routed by the peer table
//     to a peer sending from that address: the table's longest match for
//     it is a subnet leased to that peer. Otherwise it is dropped as
//     DropSpoofedSource: a peer impersonating another node's pods, or
//     ours. The pump looks the source up anyway to attribute the packet to
//     its peer's counters, so this costs one comparison.
//
// Both read the snapshot the pump loads once per batch (routes.Source):
// a peer that joins is admitted, and one whose lease is deleted or expires
// refused, from the watch event that changes the table on; there is no
// lock and no allocation per packet. The outer address only ever refuses:
// it never picks a route or a peer's counters.
//
// Masquerading. flannel's ip-masq rules (cmd/overlay/ipmasq.go) never
// rewrite pod-to-pod traffic, and rewrite traffic from outside the cluster
// network bound for another node's pod to the sending node's overlay
// address (MASQUERADE takes overlay0's, or flannel.1's, address: the
// network address of the node's subnet). Traffic from the node itself
// leaves with that address too, and so do the ICMP errors it sends as a
// router. So every packet a node sends into the overlay has a source in
// its own subnet, and the check makes no exception for the cluster
// network: a source elsewhere in it belongs to another node, and a peer
// sending it is spoofing. What it refuses by design is traffic a node
// forwards into the overlay from outside the cluster network without
// masquerading it (a node routing for an external network without
// --ip-masq): such a cluster needs --ip-masq on that node, or the check
// off on the receivers.
//
// NAT. Where NAT between nodes rewrites the outer source address,
// SourceCheckNAT knows the sender by the inner source MAC instead, which
// flannel and overlay always set to the sender's VtepMAC, and keeps the
// inner check; SourceCheckOff is kernel VXLAN's behaviour. Neither check
// is authentication: a host on the underlay that forges a peer's outer
// address (or, under SourceCheckNAT, its MAC) and a source in that peer's
// subnet gets through; only encryption (WireGuard) closes that.
//
// Lifecycle. Run starts the two pumps and a watcher of its context, and
// returns only when all three have exited; Close (idempotent) closes the
// device and the socket, which unblocks the pumps' reads.
//
// Naive mode (Options.Naive, with a plain TUN and a socket without
// offloads) moves one packet per read and per send: the shape of flannel's
// old udp backend, kept as the benchmarks' floor.
package tunnel
