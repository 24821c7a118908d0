package encap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
)

// Well-known VXLAN UDP ports.
const (
	// PortLinux is the port Linux (and so flannel's vxlan backend) uses by
	// default. It predates the IANA assignment.
	PortLinux = 8472
	// PortIANA is the port IANA assigned to VXLAN (RFC 7348 section 5).
	PortIANA = 4789
)

// Header sizes. Each is derived from the fields of its header so that the
// overhead figures below are arithmetic, not folklore.
const (
	// HeaderLen is the size of the VXLAN header: flags (1), reserved (3),
	// VNI (3), reserved (1).
	HeaderLen = 1 + 3 + 3 + 1
	// EthernetLen is the size of the inner Ethernet header: destination MAC,
	// source MAC, EtherType. VXLAN frames carry no 802.1Q tag and no FCS.
	EthernetLen = macLen + macLen + 2
	// Headroom is the space an IP packet needs in front of it to be
	// encapsulated in place: VXLAN header plus inner Ethernet header.
	Headroom = HeaderLen + EthernetLen

	// UDPHeaderLen, IPv4HeaderLen and IPv6HeaderLen size the outer headers
	// that the kernel writes (IPv4 without options).
	UDPHeaderLen  = 8
	IPv4HeaderLen = 20
	IPv6HeaderLen = 40

	// OverheadIPv4 is what VXLAN adds to an inner IP packet over an IPv4
	// underlay: 20 + 8 + 8 + 14 = 50, so a 1500-byte underlay carries a
	// 1450-byte overlay MTU, the figure flannel configures.
	OverheadIPv4 = IPv4HeaderLen + UDPHeaderLen + Headroom
	// OverheadIPv6 is the same over an IPv6 underlay: 40 + 8 + 8 + 14 = 70.
	OverheadIPv6 = IPv6HeaderLen + UDPHeaderLen + Headroom
)

const macLen = 6

// Field offsets inside a frame (VXLAN header first, then inner Ethernet).
const (
	offFlags     = 0
	offVNI       = 4
	offEthDst    = HeaderLen
	offEthSrc    = offEthDst + macLen
	offEtherType = offEthSrc + macLen
)

// flagI is the "I" flag of RFC 7348: the VNI field is valid. It is the only
// defined flag; the other seven bits are reserved.
const flagI = 0x08

// EtherTypes of the inner frame.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeIPv6 = 0x86DD
)

// MaxVNI is the largest VXLAN Network Identifier: the field is 24 bits.
const MaxVNI = 1<<24 - 1

// VNI is a VXLAN Network Identifier. The zero value is VNI 0, which is valid
// on the wire; flannel's default is 1. A VNI made with NewVNI always fits the
// 24-bit field; a larger value made by conversion is rejected by Encap with
// ErrVNIRange and never matches a received frame in Decap.
type VNI uint32

// Valid reports whether v fits the 24-bit VNI field.
func (v VNI) Valid() bool { return v <= MaxVNI }

// ErrVNIRange reports a VNI that does not fit in 24 bits. NewVNI wraps it
// with the bad value; Encap returns it unwrapped. Reject the configuration.
var ErrVNIRange = errors.New("encap: VNI out of range (0-16777215)")

// NewVNI returns v as a VNI, or ErrVNIRange if it does not fit in 24 bits.
func NewVNI(v uint32) (VNI, error) {
	if v > MaxVNI {
		return 0, fmt.Errorf("%w: %d", ErrVNIRange, v)
	}
	return VNI(v), nil
}

// MAC is an Ethernet address in the form the hot path wants: comparable,
// copyable, never nil. The zero value is 00:00:00:00:00:00.
type MAC [macLen]byte

// MACFrom converts a net.HardwareAddr of 6 bytes to a MAC.
func MACFrom(hw net.HardwareAddr) (MAC, error) {
	var m MAC
	if len(hw) != macLen {
		return m, fmt.Errorf("encap: MAC %q is %d bytes, want %d", hw.String(), len(hw), macLen)
	}
	copy(m[:], hw)
	return m, nil
}

// ParseMAC parses a colon-separated 48-bit MAC such as "3a:2e:6c:5d:b4:d6".
func ParseMAC(s string) (MAC, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return MAC{}, fmt.Errorf("encap: parse MAC: %w", err)
	}
	return MACFrom(hw)
}

// String formats m as lowercase colon-separated hex, as flannel writes
// VtepMAC into its leases.
func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// HardwareAddr returns a copy of m as a net.HardwareAddr.
func (m MAC) HardwareAddr() net.HardwareAddr { return append(net.HardwareAddr(nil), m[:]...) }

// Errors returned by Encap and Decap. They are returned unwrapped, so a
// datapath may compare them with == (or errors.Is) and count drops by reason.
var (
	// ErrShortBuffer: Encap was given a buffer with no IP packet after the
	// Headroom bytes, or Decap a frame shorter than the VXLAN and Ethernet
	// headers. The caller drops the packet.
	ErrShortBuffer = errors.New("encap: frame shorter than VXLAN and Ethernet headers")
	// ErrNoIFlag: the VXLAN I flag is clear, so the VNI is not valid
	// (RFC 7348 section 5). The caller drops the frame.
	ErrNoIFlag = errors.New("encap: VXLAN I flag not set")
	// ErrWrongVNI: the frame belongs to another VXLAN network. Dropped.
	ErrWrongVNI = errors.New("encap: VNI is not ours")
	// ErrNotOurMAC: the inner destination MAC is not our VtepMAC; a kernel
	// VTEP drops these too, so we do the same.
	ErrNotOurMAC = errors.New("encap: inner destination MAC is not our VtepMAC")
	// ErrARP: the inner frame is ARP, whatever its destination MAC (requests
	// are broadcast). flannel's kernel backend programs static neighbour
	// entries and never needs ARP across the overlay, so a peer sending ARP
	// is misconfigured. Dropped and counted on its own.
	ErrARP = errors.New("encap: inner frame is ARP")
	// ErrEtherType: the inner EtherType is neither IPv4 nor IPv6. Dropped.
	ErrEtherType = errors.New("encap: inner EtherType is not IPv4 or IPv6")
	// ErrVersionMismatch: the EtherType says one IP version and the packet's
	// version nibble another, or the nibble is neither 4 nor 6. Dropped.
	ErrVersionMismatch = errors.New("encap: inner IP version does not match EtherType")
	// ErrTruncatedIP: the inner packet is shorter than its IP header (or
	// than the length that header declares). Dropped.
	ErrTruncatedIP = errors.New("encap: inner IP packet truncated")
)

// Encap writes the VXLAN and inner Ethernet headers for the IP packet at
// buf[Headroom:] into buf[:Headroom], in place. dst is the peer's VtepMAC and
// src our own. The EtherType follows the packet's IP version nibble.
//
// It returns ErrShortBuffer if buf holds no IP packet after the headroom,
// ErrVNIRange if vni does not fit 24 bits, and ErrVersionMismatch if the
// packet is neither IPv4 nor IPv6; buf is not modified then. Encap does not
// validate the IP header beyond its version: packets come from the local
// kernel through the TUN. The frame to send is all of buf.
func Encap(buf []byte, vni VNI, dst, src MAC) error {
	if len(buf) <= Headroom {
		return ErrShortBuffer
	}
	if vni > MaxVNI {
		return ErrVNIRange
	}
	var etherType uint16
	switch buf[Headroom] >> 4 {
	case 4:
		etherType = EtherTypeIPv4
	case 6:
		etherType = EtherTypeIPv6
	default:
		return ErrVersionMismatch
	}
	putHeader(buf, vni, dst, src, etherType)
	return nil
}

// putHeader writes both headers; reserved fields are zero (RFC 7348 §5).
func putHeader(buf []byte, vni VNI, dst, src MAC, etherType uint16) {
	_ = buf[Headroom-1] // one bounds check for all writes below
	binary.BigEndian.PutUint32(buf[offFlags:], flagI<<24)
	binary.BigEndian.PutUint32(buf[offVNI:], uint32(vni)<<8)
	copy(buf[offEthDst:offEthDst+macLen], dst[:])
	copy(buf[offEthSrc:offEthSrc+macLen], src[:])
	binary.BigEndian.PutUint16(buf[offEtherType:], etherType)
}

// Header is the decoded form of the first Headroom bytes of a frame. It is a
// plain value; the zero Header is all-zero fields (no I flag).
type Header struct {
	Flags     uint8  // VXLAN flags byte; 0x08 is the I flag, the rest reserved
	VNI       VNI    // VXLAN Network Identifier (24 bits)
	Dst, Src  MAC    // inner Ethernet destination and source
	EtherType uint16 // inner EtherType
}

// ParseHeader decodes the VXLAN and inner Ethernet headers of frame without
// validating them. It is for diagnostics and tests; the datapath uses Decap.
func ParseHeader(frame []byte) (Header, error) {
	if len(frame) < Headroom {
		return Header{}, ErrShortBuffer
	}
	var h Header
	h.Flags = frame[offFlags]
	h.VNI = VNI(binary.BigEndian.Uint32(frame[offVNI:]) >> 8)
	copy(h.Dst[:], frame[offEthDst:])
	copy(h.Src[:], frame[offEthSrc:])
	h.EtherType = binary.BigEndian.Uint16(frame[offEtherType:])
	return h, nil
}

// Decap validates a VXLAN frame (the UDP payload) addressed to VNI vni and
// VtepMAC local, and returns the inner IP packet as a subslice of frame,
// trimmed to the length its IP header declares (Ethernet padding removed).
//
// On rejection it returns nil and exactly one of the sentinel errors above,
// checked in this order: ErrShortBuffer, ErrNoIFlag, ErrWrongVNI, ErrARP,
// ErrNotOurMAC, ErrEtherType, then ErrVersionMismatch (or ErrTruncatedIP
// when there is no inner byte at all) and ErrTruncatedIP. Reserved
// bits are ignored. The inner source MAC is not checked: peers are
// identified by the lease table, not by what a frame claims.
//
// An IPv6 payload length of zero (a jumbogram, RFC 2675) yields just the
// 40-byte header; jumbograms cannot cross a VXLAN underlay anyway.
func Decap(frame []byte, vni VNI, local MAC) ([]byte, error) {
	if len(frame) < Headroom {
		return nil, ErrShortBuffer
	}
	if frame[offFlags]&flagI == 0 {
		return nil, ErrNoIFlag
	}
	// A vni above MaxVNI can never equal the 24-bit field: every frame is
	// then ErrWrongVNI, rather than aliasing a valid VNI by masking.
	if VNI(binary.BigEndian.Uint32(frame[offVNI:])>>8) != vni {
		return nil, ErrWrongVNI
	}
	etherType := binary.BigEndian.Uint16(frame[offEtherType:])
	if etherType == EtherTypeARP {
		return nil, ErrARP
	}
	if MAC(frame[offEthDst:offEthSrc]) != local {
		return nil, ErrNotOurMAC
	}
	pkt := frame[Headroom:]
	switch etherType {
	case EtherTypeIPv4:
		return ipv4Packet(pkt)
	case EtherTypeIPv6:
		return ipv6Packet(pkt)
	default:
		return nil, ErrEtherType
	}
}

// ipv4Packet checks the IPv4 header length fields and trims padding.
func ipv4Packet(pkt []byte) ([]byte, error) {
	if len(pkt) == 0 {
		return nil, ErrTruncatedIP
	}
	if pkt[0]>>4 != 4 {
		return nil, ErrVersionMismatch
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < IPv4HeaderLen || len(pkt) < ihl {
		return nil, ErrTruncatedIP
	}
	total := int(binary.BigEndian.Uint16(pkt[2:4]))
	if total < ihl || total > len(pkt) {
		return nil, ErrTruncatedIP
	}
	return pkt[:total], nil
}

// ipv6Packet checks the IPv6 payload length and trims padding.
func ipv6Packet(pkt []byte) ([]byte, error) {
	if len(pkt) == 0 {
		return nil, ErrTruncatedIP
	}
	if pkt[0]>>4 != 6 {
		return nil, ErrVersionMismatch
	}
	if len(pkt) < IPv6HeaderLen {
		return nil, ErrTruncatedIP
	}
	total := IPv6HeaderLen + int(binary.BigEndian.Uint16(pkt[4:6]))
	if total > len(pkt) {
		return nil, ErrTruncatedIP
	}
	return pkt[:total], nil
}
