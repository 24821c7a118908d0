package tunnel

import (
	"fmt"
	"sync/atomic"
)

// DropReason says why the datapath dropped a packet.
type DropReason uint8

// Reasons for dropping a packet read from the TUN (direction out).
const (
	// DropNoRoute: no peer lease covers the destination.
	DropNoRoute DropReason = iota
	// DropLoop: the destination is in our own subnet, which the kernel
	// should have delivered locally; sending it back would loop.
	DropLoop
	// DropTooBig: larger than the overlay MTU (answered with ICMP
	// "fragmentation needed" or ICMPv6 "packet too big" where allowed).
	// Received (in) packets larger than the MTU are TCP super-packets from
	// kernel VTEPs and are segmented; only what cannot be is dropped.
	DropTooBig
	// DropMalformed: not an IPv4 or IPv6 packet, or shorter than its
	// header (either direction).
	DropMalformed
	// DropSend: the UDP send failed.
	DropSend

	// Reasons for dropping a datagram received from the underlay
	// (direction in). The decapsulation reasons mirror encap's errors.

	// DropShort: shorter than the VXLAN and Ethernet headers.
	DropShort
	// DropNoIFlag: the VXLAN I flag is clear.
	DropNoIFlag
	// DropWrongVNI: another VXLAN network's frame.
	DropWrongVNI
	// DropNotOurMAC: the inner destination MAC is not our VtepMAC.
	DropNotOurMAC
	// DropARP: an ARP frame (flannel peers never send ARP).
	DropARP
	// DropEtherType: neither IPv4 nor IPv6.
	DropEtherType
	// DropVersion: the IP version disagrees with the EtherType.
	DropVersion
	// DropTruncatedIP: the inner packet is shorter than its header says.
	DropTruncatedIP
	// DropTruncated: the datagram did not fit the receive buffer.
	DropTruncated
	// DropWrite: writing to the TUN failed.
	DropWrite
	// DropUnknownSource: the sender holds no current lease (by the outer
	// source address, or by the inner source MAC under SourceCheckNAT).
	// Counted per datagram, before any parsing.
	DropUnknownSource
	// DropSpoofedSource: the inner source address is not routed to the
	// peer that sent the packet (see SourceCheck).
	DropSpoofedSource

	numDropReasons
)

var dropNames = [numDropReasons]string{
	DropNoRoute:     "no_route",
	DropLoop:        "loop",
	DropTooBig:      "too_big",
	DropMalformed:   "malformed",
	DropSend:        "send_error",
	DropShort:       "short",
	DropNoIFlag:     "no_i_flag",
	DropWrongVNI:    "wrong_vni",
	DropNotOurMAC:   "not_our_mac",
	DropARP:         "arp",
	DropEtherType:   "ethertype",
	DropVersion:     "ip_version",
	DropTruncatedIP: "truncated_ip",
	DropTruncated:   "truncated",
	DropWrite:       "write_error",

	DropUnknownSource: "unknown_source",
	DropSpoofedSource: "spoofed_source",
}

// String returns the reason as a metrics label value ("no_route").
func (r DropReason) String() string {
	if r < numDropReasons {
		return dropNames[r]
	}
	return fmt.Sprintf("DropReason(%d)", uint8(r))
}

// OutDropReasons and InDropReasons list the reasons of each direction, in
// order, for exporters that want every series present from the start.
var (
	OutDropReasons = []DropReason{DropNoRoute, DropLoop, DropTooBig, DropMalformed, DropSend}
	InDropReasons  = []DropReason{DropTooBig, DropMalformed, DropShort, DropNoIFlag, DropWrongVNI, DropNotOurMAC, DropARP, DropEtherType, DropVersion, DropTruncatedIP, DropTruncated, DropWrite, DropUnknownSource, DropSpoofedSource}
)

// Stats is a reading of a Tunnel's counters.
type Stats struct {
	// Device is the TUN's name; Mode how it moves packets.
	Device string
	Mode   Mode
	// GSO and GRO report whether UDP segmentation and coalescing are
	// active on the underlay socket.
	GSO, GRO bool
	// BatchSize is the most packets a pump handles per system call; 1 in
	// naive mode.
	BatchSize int
	// Naive reports the naive mode (one packet per system call).
	Naive bool
	// SourceCheck is the check on received frames' senders.
	SourceCheck SourceCheck
	// ChecksumSteering reports that datagrams with an outer UDP checksum
	// are received apart, and their inner checksums trusted
	// (steer_linux.go).
	ChecksumSteering bool
	// Out counts packets from the TUN to peers, In from peers to the TUN.
	Out, In DirStats
}

// DirStats counts one direction.
type DirStats struct {
	// Packets and Bytes count inner IP packets delivered: sent to a peer
	// (out) or written to the TUN (in).
	Packets, Bytes uint64
	// Batches counts reads from the TUN (out) or the socket (in).
	Batches uint64
	// Errors counts failed reads, which carry no packet to drop.
	Errors uint64
	// Drops counts dropped packets by reason; every reason of the
	// direction is present.
	Drops map[DropReason]uint64
	// Unattributed counts (in only) packets delivered whose inner source
	// address no peer's subnet covers, so no peer's counters see them;
	// only SourceCheckOff lets such packets through.
	Unattributed uint64
	// PartialChecksums counts (in only) packets whose inner transport
	// checksum arrived unfinished from a kernel VTEP on a virtual link,
	// and was completed (see csum.go).
	PartialChecksums uint64
	// Checksummed counts (in only) datagrams received with an outer UDP
	// checksum the kernel verified, whose inner checksums were therefore
	// not checked again (from agents; kernel VTEPs send none over IPv4).
	Checksummed uint64
}

// dirCounters are one direction's atomic counters, written by its pump.
type dirCounters struct {
	packets, bytes, batches, errors, unattributed, partial, checksummed atomic.Uint64
	drops                                                               [numDropReasons]atomic.Uint64
	_                                                                   [128]byte // keep the pumps' counters apart
}

func (d *dirCounters) read(reasons []DropReason) DirStats {
	s := DirStats{
		Packets: d.packets.Load(), Bytes: d.bytes.Load(),
		Batches: d.batches.Load(), Errors: d.errors.Load(),
		Unattributed: d.unattributed.Load(), PartialChecksums: d.partial.Load(),
		Checksummed: d.checksummed.Load(),
		Drops:       make(map[DropReason]uint64, len(reasons)),
	}
	for _, r := range reasons {
		s.Drops[r] = d.drops[r].Load()
	}
	return s
}
