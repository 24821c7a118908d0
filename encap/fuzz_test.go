package encap

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// macFrom48 takes the low 48 bits of v as a MAC, so the fuzzer can vary MACs
// through an integer argument.
func macFrom48(v uint64) MAC {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return MAC(b[2:])
}

func mac48(m MAC) uint64 {
	var b [8]byte
	copy(b[2:], m[:])
	return binary.BigEndian.Uint64(b[:])
}

// FuzzDecap feeds arbitrary frames to Decap. It must never panic, must agree
// with the reference decoder on the verdict and the packet bounds, must
// return a slice inside the frame, must not modify the frame, and an
// accepted frame must re-encapsulate to itself (reserved bits cleared).
//
// With useFrameHeader the VNI and local MAC are taken from the frame itself,
// so mutations reach the IP checks rather than stopping at ErrWrongVNI.
func FuzzDecap(f *testing.F) {
	for i, g := range goldenFrames {
		f.Add(goldenPayload(f, i), uint32(1), mac48(g.dst), false)
	}
	for _, c := range decapCases(f) {
		f.Add(c.frame, uint32(c.vni), mac48(c.local), false)
		f.Add(c.frame, uint32(c.vni), mac48(c.local), true)
	}
	f.Fuzz(func(t *testing.T, frame []byte, vni uint32, local uint64, useFrameHeader bool) {
		v, mac := VNI(vni), macFrom48(local)
		if useFrameHeader && len(frame) >= Headroom {
			h, err := ParseHeader(frame)
			if err != nil {
				t.Fatalf("ParseHeader(%d bytes): %v", len(frame), err)
			}
			v, mac = h.VNI, h.Dst
		}
		orig := bytes.Clone(frame)
		pkt, err := Decap(frame, v, mac)
		if !bytes.Equal(frame, orig) {
			t.Fatal("Decap modified the frame")
		}
		ref := slowDecap(frame, v, mac)
		if err != ref.err {
			t.Fatalf("Decap error = %v, reference %v", err, ref.err)
		}
		if err != nil {
			if pkt != nil {
				t.Fatalf("Decap returned %d bytes with error %v", len(pkt), err)
			}
			return
		}
		checkAliases(t, pkt, frame)
		if start := cap(frame) - cap(pkt); start != ref.start || start+len(pkt) != ref.end {
			t.Fatalf("Decap = frame[%d:%d], reference frame[%d:%d]", start, start+len(pkt), ref.start, ref.end)
		}

		// Re-encapsulating what was accepted gives the frame back, up to the
		// reserved bits (ignored on receive, zero on send) and the padding
		// Decap trimmed.
		h, err := ParseHeader(frame)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, Headroom+len(pkt))
		copy(buf[Headroom:], pkt)
		if err := Encap(buf, v, mac, h.Src); err != nil {
			t.Fatalf("Encap of an accepted packet: %v", err)
		}
		want := bytes.Clone(frame[:Headroom+len(pkt)])
		want[0] = flagI
		want[1], want[2], want[3], want[7] = 0, 0, 0, 0
		if !bytes.Equal(buf, want) {
			t.Fatalf("re-encapsulated %x, want %x", buf, want)
		}
	})
}

// FuzzRoundTrip encapsulates arbitrary packets and checks Encap against the
// reference encoder and that Decap(Encap(p)) is p itself, in place.
//
// With fixLengths the packet's IP length fields are made to agree with its
// size first, so that most inputs are valid packets and the identity is
// checked, not just agreement with the reference.
func FuzzRoundTrip(f *testing.F) {
	for i, g := range goldenFrames {
		f.Add(goldenPayload(f, i)[Headroom:], uint32(1), mac48(g.dst), mac48(g.src), false)
	}
	for _, c := range decapCases(f) {
		if len(c.frame) > Headroom {
			f.Add(c.frame[Headroom:], uint32(c.vni), mac48(c.local), mac48(macNodeA), true)
		}
	}
	f.Add([]byte{}, uint32(1), uint64(0), uint64(0), false)
	f.Add(icmp6Packet(), uint32(MaxVNI+1), uint64(1), uint64(2), true)
	f.Fuzz(func(t *testing.T, pkt []byte, vni uint32, dst, src uint64, fixLengths bool) {
		if fixLengths {
			pkt = bytes.Clone(pkt)
			fixIPLengths(pkt)
		}
		v, dstMAC, srcMAC := VNI(vni), macFrom48(dst), macFrom48(src)

		buf := make([]byte, Headroom+len(pkt))
		for i := range buf[:Headroom] {
			buf[i] = 0xa5
		}
		copy(buf[Headroom:], pkt)
		orig := bytes.Clone(buf)
		err := Encap(buf, v, dstMAC, srcMAC)
		ref, refErr := slowEncap(pkt, v, dstMAC, srcMAC)
		if err != refErr {
			t.Fatalf("Encap error = %v, reference %v", err, refErr)
		}
		if err != nil {
			if !bytes.Equal(buf, orig) {
				t.Fatal("Encap modified the buffer on error")
			}
			return
		}
		if !bytes.Equal(buf, ref) {
			t.Fatalf("Encap = %x, reference %x", buf, ref)
		}

		got, err := Decap(buf, v, dstMAC)
		if n, ok := slowIPLen(pkt); ok && n == len(pkt) {
			// A well-formed packet: the round trip is the identity.
			if err != nil {
				t.Fatalf("Decap(Encap(p)) error %v for a well-formed %d-byte packet", err, len(pkt))
			}
			checkAliases(t, got, buf)
			if &got[0] != &buf[Headroom] || !bytes.Equal(got, pkt) {
				t.Fatalf("Decap(Encap(p)) = %x, want p = %x in place", got, pkt)
			}
		} else if want := slowDecap(buf, v, dstMAC); err != want.err {
			t.Fatalf("Decap(Encap(p)) error = %v, reference %v", err, want.err)
		}

		// The flow hash never panics, is deterministic, and the port is in
		// range.
		if FlowHash(pkt) != FlowHash(bytes.Clone(pkt)) {
			t.Fatal("FlowHash is not deterministic")
		}
		if p := SourcePort(pkt, SourcePortMin, SourcePortMax); p < SourcePortMin || p > SourcePortMax {
			t.Fatalf("SourcePort = %d", p)
		}
	})
}

// fixIPLengths makes the length fields of an IPv4 or IPv6 packet agree with
// len(pkt) where that is possible, leaving other bytes as they are.
func fixIPLengths(pkt []byte) {
	if len(pkt) == 0 || len(pkt) > 0xffff {
		return
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < IPv4HeaderLen {
			return
		}
		ihl := max(int(pkt[0]&0x0f), 5)
		ihl = min(ihl, len(pkt)/4)
		pkt[0] = 0x40 | byte(ihl)
		binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	case 6:
		if len(pkt) < IPv6HeaderLen {
			return
		}
		binary.BigEndian.PutUint16(pkt[4:6], uint16(len(pkt)-IPv6HeaderLen))
	}
}
