package encap

import (
	"bytes"
	"encoding/binary"
)

// This file holds a slow, straightforward reference implementation of the
// framing, written from RFC 7348 and RFC 791/8200 without the fast path's
// offsets: the VXLAN and Ethernet headers are decoded with binary.Read into a
// struct, frames are built with append. The fast functions are checked
// against it in the table tests and the fuzz targets.

// slowWire is the on-the-wire layout of the VXLAN and inner Ethernet headers.
type slowWire struct {
	Flags     uint8
	Reserved1 [3]byte
	VNI       [3]byte
	Reserved2 uint8
	Dst       [6]byte
	Src       [6]byte
	EtherType uint16
}

// slowDecapResult is what slowDecap computes: the bounds of the inner packet
// inside the frame, or the error Decap must return.
type slowDecapResult struct {
	start, end int
	err        error
}

func slowDecap(frame []byte, vni VNI, local MAC) slowDecapResult {
	var w slowWire
	r := bytes.NewReader(frame)
	if err := binary.Read(r, binary.BigEndian, &w); err != nil {
		return slowDecapResult{err: ErrShortBuffer}
	}
	start := len(frame) - r.Len()
	if w.Flags&0b0000_1000 == 0 {
		return slowDecapResult{err: ErrNoIFlag}
	}
	wireVNI := uint32(w.VNI[0])<<16 | uint32(w.VNI[1])<<8 | uint32(w.VNI[2])
	if uint64(wireVNI) != uint64(vni) {
		return slowDecapResult{err: ErrWrongVNI}
	}
	if w.EtherType == 0x0806 {
		return slowDecapResult{err: ErrARP}
	}
	if !bytes.Equal(w.Dst[:], local[:]) {
		return slowDecapResult{err: ErrNotOurMAC}
	}
	var wantVersion byte
	switch w.EtherType {
	case 0x0800:
		wantVersion = 4
	case 0x86dd:
		wantVersion = 6
	default:
		return slowDecapResult{err: ErrEtherType}
	}
	inner := frame[start:]
	if len(inner) == 0 {
		return slowDecapResult{err: ErrTruncatedIP}
	}
	if inner[0]/16 != wantVersion {
		return slowDecapResult{err: ErrVersionMismatch}
	}
	n, ok := slowIPLen(inner)
	if !ok {
		return slowDecapResult{err: ErrTruncatedIP}
	}
	return slowDecapResult{start: start, end: start + n}
}

// slowIPLen returns the length an IP packet's header declares, and whether
// pkt is long enough to hold that header and that length.
func slowIPLen(pkt []byte) (int, bool) {
	if len(pkt) == 0 {
		return 0, false
	}
	switch pkt[0] / 16 {
	case 4:
		if len(pkt) < 20 {
			return 0, false
		}
		headerLen := int(pkt[0]%16) * 4
		total := int(pkt[2])*256 + int(pkt[3])
		if headerLen < 20 || headerLen > len(pkt) || total < headerLen || total > len(pkt) {
			return 0, false
		}
		return total, true
	case 6:
		if len(pkt) < 40 {
			return 0, false
		}
		total := 40 + int(pkt[4])*256 + int(pkt[5])
		if total > len(pkt) {
			return 0, false
		}
		return total, true
	}
	return 0, false
}

// slowEncap builds the frame Encap must produce for pkt: the 22 header bytes
// followed by pkt, or the error Encap must return.
func slowEncap(pkt []byte, vni VNI, dst, src MAC) ([]byte, error) {
	if len(pkt) == 0 {
		return nil, ErrShortBuffer
	}
	if uint64(vni) >= 1<<24 {
		return nil, ErrVNIRange
	}
	var etherType []byte
	switch pkt[0] / 16 {
	case 4:
		etherType = []byte{0x08, 0x00}
	case 6:
		etherType = []byte{0x86, 0xdd}
	default:
		return nil, ErrVersionMismatch
	}
	var f []byte
	f = append(f, 0x08, 0, 0, 0)                                // I flag, reserved
	f = append(f, byte(vni>>16), byte(vni>>8), byte(vni), 0x00) // VNI, reserved
	f = append(f, dst[:]...)
	f = append(f, src[:]...)
	f = append(f, etherType...)
	return append(f, pkt...), nil
}
