package encap_test

import (
	"encoding/hex"
	"errors"
	"fmt"

	"overlay/encap"
)

// An ICMP echo request from pod 10.244.30.2 to pod 10.244.83.2 (IPv4 header
// and 8 bytes of ICMP).
var echoRequest, _ = hex.DecodeString("4500001c000000004001f3f50af41e020af453020800f7ff00000000")

// Encapsulate in place: the packet is read into the buffer at Headroom, and
// Encap writes the VXLAN and inner Ethernet headers in front of it.
func ExampleEncap() {
	peer, _ := encap.ParseMAC("a6:c3:4f:6d:8b:b2") // the peer's VtepMAC, from its lease
	own, _ := encap.ParseMAC("3a:2e:6c:5d:b4:d6")

	buf := make([]byte, encap.Headroom+len(echoRequest))
	copy(buf[encap.Headroom:], echoRequest) // a TUN read at offset Headroom
	if err := encap.Encap(buf, 1, peer, own); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("vxlan    % x\n", buf[:encap.HeaderLen])
	fmt.Printf("ethernet % x\n", buf[encap.HeaderLen:encap.Headroom])
	fmt.Println("frame", len(buf), "bytes; outer IPv4 packet", len(buf)+encap.IPv4HeaderLen+encap.UDPHeaderLen)
	// Output:
	// vxlan    08 00 00 00 00 00 01 00
	// ethernet a6 c3 4f 6d 8b b2 3a 2e 6c 5d b4 d6 08 00
	// frame 50 bytes; outer IPv4 packet 78
}

// Decapsulate and count drops by reason: each rejection is its own sentinel.
func ExampleDecap() {
	own, _ := encap.ParseMAC("a6:c3:4f:6d:8b:b2")
	frame, _ := hex.DecodeString("0800000000000100" + "a6c34f6d8bb2" + "3a2e6c5db4d6" + "0800" +
		"4500001c000000004001f3f50af41e020af453020800f7ff00000000")

	for _, vni := range []encap.VNI{1, 2} {
		pkt, err := encap.Decap(frame, vni, own)
		switch {
		case err == nil:
			fmt.Printf("VNI %d: deliver %d-byte IPv%d packet\n", vni, len(pkt), pkt[0]>>4)
		case errors.Is(err, encap.ErrWrongVNI):
			fmt.Printf("VNI %d: drop, counted as wrong VNI\n", vni)
		default:
			fmt.Printf("VNI %d: drop: %v\n", vni, err)
		}
	}
	// Output:
	// VNI 1: deliver 28-byte IPv4 packet
	// VNI 2: drop, counted as wrong VNI
}

// The outer UDP source port carries the inner flow's entropy; one flow
// always gets the same port.
func ExampleSourcePort() {
	a := encap.SourcePort(echoRequest, encap.SourcePortMin, encap.SourcePortMax)
	b := encap.SourcePort(echoRequest, encap.SourcePortMin, encap.SourcePortMax)
	fmt.Println(a == b, a >= encap.SourcePortMin && a <= encap.SourcePortMax)
	// Output: true true
}
