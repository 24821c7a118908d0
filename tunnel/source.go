package tunnel

import (
	"fmt"
	"net/netip"

	"overlay/encap"
	"overlay/routes"
)

// SourceCheck says which received frames the in pump lets into the pod
// network (Options.SourceCheck); the package documentation has the design
// notes.
type SourceCheck uint8

const (
	// SourceCheckStrict, the zero value and the default: a datagram's
	// outer source address must be one a current lease names (its
	// PublicIP or PublicIPv6), else all of it is dropped as
	// DropUnknownSource before any parsing; and each inner packet's
	// source address must be routed, by the peer table, to a peer that
	// sends from that address, else it is dropped as DropSpoofedSource.
	SourceCheckStrict SourceCheck = iota
	// SourceCheckNAT is for underlays with NAT between nodes, where the
	// outer source address is not the sender's lease address: the sender
	// is the lease whose VtepMAC is the inner source MAC
	// (DropUnknownSource when there is none), and each inner source
	// address must be routed to it (DropSpoofedSource).
	SourceCheckNAT
	// SourceCheckOff accepts every well-formed frame, as kernel VXLAN does.
	SourceCheckOff
)

var sourceCheckNames = [...]string{SourceCheckStrict: "strict", SourceCheckNAT: "nat", SourceCheckOff: "off"}

// String returns the check's name as ParseSourceCheck takes it ("strict").
func (c SourceCheck) String() string {
	if int(c) < len(sourceCheckNames) {
		return sourceCheckNames[c]
	}
	return fmt.Sprintf("SourceCheck(%d)", uint8(c))
}

// ParseSourceCheck parses "strict", "nat" or "off"; the empty string means
// SourceCheckStrict.
func ParseSourceCheck(s string) (SourceCheck, error) {
	if s == "" {
		return SourceCheckStrict, nil
	}
	for c, name := range sourceCheckNames {
		if s == name {
			return SourceCheck(c), nil
		}
	}
	return 0, fmt.Errorf("tunnel: unknown source check %q (want strict, nat or off)", s)
}

// offInnerSrcMAC is where the inner Ethernet source MAC sits in a frame:
// after the VXLAN header and the destination MAC.
const offInnerSrcMAC = encap.HeaderLen + len(encap.MAC{})

// outer is the first half of the check, made once per received message
// (a GRO message holds a run of datagrams from one sender): it returns the
// sender of a message from addr, and false when the message must be
// dropped as DropUnknownSource. Only the strict check looks at addr; the
// others return a nil Source and true.
func (c SourceCheck) outer(snap *routes.Snapshot, addr netip.Addr) (*routes.Source, bool) {
	if c != SourceCheckStrict {
		return nil, true
	}
	src := snap.SourceAddr(addr)
	return src, src != nil
}

// inner is the second half, made for each decapsulated packet pkt (inside
// frame) from the sender outer returned. It returns the route covering
// pkt's source address, which the caller attributes the packet to, and
// whether pkt may pass; when it may not, reason says why. With
// SourceCheckOff every packet passes, and the route is nil when no peer's
// subnet covers the source. pkt must be a packet encap.Decap accepted.
func (c SourceCheck) inner(snap *routes.Snapshot, from *routes.Source, frame, pkt []byte) (r *routes.Route, reason DropReason, ok bool) {
	if pkt[0]>>4 == 4 {
		r = snap.Lookup4([4]byte(pkt[12:16]))
	} else {
		r = snap.Lookup6([16]byte(pkt[8:24]))
	}
	switch c {
	case SourceCheckOff:
		if r != nil && r.Local {
			r = nil
		}
		return r, 0, true
	case SourceCheckNAT:
		if from = snap.SourceMAC(encap.MAC(frame[offInnerSrcMAC:])); from == nil {
			return nil, DropUnknownSource, false
		}
	}
	if !from.Owns(r) {
		return nil, DropSpoofedSource, false
	}
	return r, 0, true
}
