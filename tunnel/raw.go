package tunnel

import "overlay/encap"

// Raw access to the datapath's system-call layer and its segmentation and
// coalescing, for the benchmark floor (benchmarks/floor): a relay with the
// pumps' system-call structure and none of their logic, so the suite can
// measure what that structure costs on its own. The agent does not use
// these; the pumps call the unexported functions directly.

// VnetHdrLen is the length of the virtio-net header an offloading TUN
// puts in front of every packet.
const VnetHdrLen = vnetHdrLen

// VnetIO moves one packet, behind its virtio-net header, per system call
// on an offloading TUN (see OpenTUN with DriverOffload).
type VnetIO struct {
	r   vnetReader
	w   func(pieces [][]byte) error
	uso bool
}

// RawVnet returns the raw packet calls of d, if d is an offloading TUN.
// Each VnetIO has write state of its own: one per writing goroutine.
func RawVnet(d Device) (VnetIO, bool) {
	r, ok1 := d.(vnetReader)
	w, ok2 := d.(vnetWriter)
	if !ok1 || !ok2 {
		return VnetIO{}, false
	}
	return VnetIO{r: r, w: w.newVnetWriter(), uso: w.udpGSO()}, true
}

// Read reads one packet with its virtio-net header into buf (VnetHdrLen
// plus up to 65535 bytes). With wait it parks in the runtime poller until
// a packet comes; without, it returns 0 when none is queued. One goroutine
// at a time.
func (v VnetIO) Read(buf []byte, wait bool) (int, error) { return v.r.readVnet(buf, wait) }

// Write writes one packet given as pieces to concatenate, the first
// starting with the virtio-net header, with one writev. One goroutine at a
// time.
func (v VnetIO) Write(pieces [][]byte) error { return v.w(pieces) }

// UDPGSO reports whether the TUN takes UDP super-packets (GSO_UDP_L4).
func (v VnetIO) UDPGSO() bool { return v.uso }

// Super is a GSO super-packet read from an offloading TUN, to be cut into
// segments as a NIC's TSO would.
type Super struct{ g gsoPacket }

// ParseSuper checks the super-packet pkt against its virtio-net header
// vnet. It reports false for a packet that is not GSO or cannot be cut.
func ParseSuper(vnet, pkt []byte) (Super, bool) {
	g, ok := parseGSO(pkt, parseVnetHdr(vnet))
	return Super{g}, ok
}

// Segments is the number of segments; HdrLen the length of each
// segment's IP and transport headers; MSS the payload of a full segment.
func (s *Super) Segments() int { return s.g.n }
func (s *Super) HdrLen() int   { return s.g.hdrLen }
func (s *Super) MSS() int      { return s.g.mss }

// Header writes segment i's IP and transport headers, every checksum
// complete, into dst (at least HdrLen bytes) and returns the segment's
// payload, a subslice of the super-packet.
func (s *Super) Header(dst []byte, i int) []byte { return s.g.header(dst, i) }

// IsGSO reports whether the virtio-net header vnet announces a GSO
// super-packet.
func IsGSO(vnet []byte) bool { return vnet[1] != vnetGSONone }

// CompleteChecksum finishes the transport checksum the kernel left partial
// in pkt, if its virtio-net header vnet says so. It reports false when the
// header's offsets do not fit pkt.
func CompleteChecksum(vnet, pkt []byte) bool {
	h := parseVnetHdr(vnet)
	if h.flags&vnetFlagNeedsCsum == 0 {
		return true
	}
	return completeChecksum(pkt, int(h.csumStart), int(h.csumOffset))
}

// Coalescer writes decapsulated packets to an offloading TUN, coalescing
// runs of one TCP (or UDP) flow into one super-packet per writev as the in
// pump does, but trusting every packet's transport checksum (it verifies
// none). Not for concurrent use.
type Coalescer struct {
	io     VnetIO
	uso    bool
	run    groRun
	hdr    []byte
	single [2][]byte
}

// NewCoalescer returns a Coalescer writing to v.
func NewCoalescer(v VnetIO) *Coalescer {
	c := &Coalescer{io: v, uso: v.UDPGSO(), hdr: make([]byte, vnetHdrLen+segHdrMax)}
	c.run.pieces = make([][]byte, 0, groMaxSegsTCP+1)
	return c
}

// Add queues pkt, an IP packet that must stay untouched until Flush, and
// writes the run it ends, if any. A transport checksum a local kernel VTEP
// left partial is finished first (csum.go), as the in pump does.
func (c *Coalescer) Add(pkt []byte) error {
	var g groPkt
	if len(pkt) >= encap.IPv6HeaderLen || len(pkt) >= encap.IPv4HeaderLen && pkt[0]>>4 == 4 {
		finishPartialChecksum(pkt)
		g = parseGRO(pkt, true)
	}
	if g.ok && g.proto == protoUDP && !c.uso {
		g.ok = false
	}
	if g.ok && c.run.add(pkt, g) {
		return nil
	}
	if err := c.Flush(); err != nil {
		return err
	}
	if g.ok {
		c.run.start(pkt, g)
		return nil
	}
	vnetHdr{}.put(c.hdr)
	c.single[0], c.single[1] = c.hdr[:vnetHdrLen], pkt
	err := c.io.Write(c.single[:])
	c.single[1] = nil
	return err
}

// Flush writes the run being coalesced, if any.
func (c *Coalescer) Flush() error {
	r := &c.run
	if r.n == 0 {
		return nil
	}
	r.header(c.hdr)
	err := c.io.Write(r.pieces)
	r.reset()
	return err
}

// FinishPartialChecksum completes pkt's transport checksum if a local
// kernel VTEP left it partial (csum.go), and reports whether it did.
func FinishPartialChecksum(pkt []byte) bool {
	if len(pkt) < encap.IPv6HeaderLen && (len(pkt) < encap.IPv4HeaderLen || pkt[0]>>4 != 4) {
		return false
	}
	return finishPartialChecksum(pkt)
}
