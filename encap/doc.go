// Package encap implements the VXLAN framing of RFC 7348 as flannel's kernel
// vxlan backend puts it on the wire, for a datapath whose local side is a TUN
// device carrying bare IP packets.
//
// A VXLAN frame on the underlay is an outer IP + UDP header (written by the
// kernel's UDP socket), the 8-byte VXLAN header, and a whole inner Ethernet
// frame. A TUN device has no link layer, so this package synthesizes the inner
// Ethernet header: destination = the peer's VtepMAC (a kernel VTEP drops
// frames whose inner destination is not its own address), source = our own
// VtepMAC, EtherType from the IP version nibble.
//
// The UDP payload this package reads and writes:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|R|R|R|R|I|R|R|R|            Reserved                           |  VXLAN
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  header
//	|                VXLAN Network Identifier (VNI) |   Reserved    |  (8)
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|              Destination MAC (peer's VtepMAC)                 |  inner
//	+                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  Ethernet
//	|                               |                               |  header
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +  (14)
//	|                 Source MAC (our VtepMAC)                      |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|   EtherType 0x0800/0x86DD     |  inner IP packet ...          |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// # Design notes
//
// Encapsulation works in place. The caller reads each IP packet into a buffer
// at offset Headroom, and Encap fills buf[:Headroom] with the VXLAN and
// Ethernet headers; nothing is copied and nothing is allocated. Decap is the
// mirror: it validates a received frame and returns the inner IP packet as a
// subslice of it, so the datapath can hand it to the TUN where it lies.
//
// Every reason a received frame can be rejected has its own sentinel error,
// returned unwrapped, so the datapath can count drops by reason with a switch
// and no allocation. Reserved fields are written as zero and ignored on
// receive (RFC 7348 section 5). Linux is stricter than the RFC here: its
// vxlan driver drops frames with reserved bits set; we follow the RFC, which
// costs nothing since we never set them.
//
// An inner ARP frame is reported as ErrARP whatever its destination MAC:
// ARP requests are broadcast, and any ARP at all means a peer is missing the
// static neighbour entry flannel programs, which is worth its own counter.
//
// The outer UDP source port carries flow entropy (RFC 7348 section 5):
// SourcePort hashes the inner addresses, protocol and ports, so one flow keeps
// one port and different flows spread over ECMP paths and receive queues.
//
// Nothing here makes a system call; the package is safe for concurrent use
// because it has no state beyond its arguments. The golden tests check the
// framing against frames captured between two flannel kernel nodes, and a
// root test exchanges pings with a real Linux vxlan device.
package encap
