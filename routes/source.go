package routes

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"overlay/encap"
)

// Source is a sender of VXLAN frames as the peer table knows it: an
// underlay address that a current lease names (its PublicIP, which is
// where flannel puts a public-ip-overwrite, or its PublicIPv6), or the
// VtepMAC of a lease. Usually one peer sends from a Source; several do when
// one node holds more than one lease (a stale lease beside its new one).
//
// The datapath finds the Source of a datagram once, by its outer source
// address (Snapshot.SourceAddr) or by its inner source MAC
// (Snapshot.SourceMAC), and then asks Owns of the route that covers each
// inner packet's source address: a peer may send only from the subnets
// leased to it.
//
// A Source belongs to the Snapshot it was found in and never changes. The
// nil *Source is the unknown sender, which owns nothing.
type Source struct {
	owners []uint32 // Route.owner of each peer sending from here
}

// Owns reports whether r is a route of a peer that sends from s. It is
// false for a nil s or r and for our own subnets (Local routes), so a
// packet that claims one of our own addresses as its source is never a
// peer's own.
func (s *Source) Owns(r *Route) bool {
	if s == nil || r == nil || r.owner == 0 {
		return false
	}
	for _, o := range s.owners {
		if o == r.owner {
			return true
		}
	}
	return false
}

// sources index a snapshot's senders by outer address and by VtepMAC. The
// keys are integers, as in the route tables, so a probe is one fast map
// lookup that allocates nothing.
type sources struct {
	v4  map[uint32]*Source
	v6  map[[2]uint64]*Source
	mac map[uint64]*Source
}

// SourceAddr returns the Source of an outer source address, or nil when no
// lease names it. An IPv4-mapped IPv6 address is looked up as IPv4. It
// allocates nothing.
func (s *Snapshot) SourceAddr(a netip.Addr) *Source {
	if s == nil {
		return nil
	}
	if a.Is4() || a.Is4In6() {
		b := a.As4()
		return s.src.v4[binary.BigEndian.Uint32(b[:])]
	}
	if a.Is6() {
		b := a.As16()
		return s.src.v6[[2]uint64{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}]
	}
	return nil
}

// SourceMAC returns the Source of a VtepMAC, as it sits in the inner
// Ethernet header's source field, or nil when no lease has it. It
// allocates nothing.
func (s *Snapshot) SourceMAC(m encap.MAC) *Source {
	if s == nil {
		return nil
	}
	return s.src.mac[macKey(m)]
}

func macKey(m encap.MAC) uint64 {
	return uint64(m[0])<<40 | uint64(m[1])<<32 | uint64(m[2])<<24 | uint64(m[3])<<16 | uint64(m[4])<<8 | uint64(m[5])
}

func newSources() sources {
	return sources{v4: map[uint32]*Source{}, v6: map[[2]uint64]*Source{}, mac: map[uint64]*Source{}}
}

// add records that the peer numbered owner sends from its endpoint's
// address, its PublicIPv6 and its VtepMAC. Update calls it while it builds
// a snapshot, before anyone can read it.
func (s sources) add(owner uint32, p Peer) {
	for _, a := range []netip.Addr{p.Endpoint.Addr(), p.PublicIPv6} {
		switch a = a.Unmap(); {
		case !a.IsValid() || a.IsUnspecified():
		case a.Is4():
			b := a.As4()
			k := binary.BigEndian.Uint32(b[:])
			s.v4[k] = join(s.v4[k], owner)
		default:
			b := a.As16()
			k := [2]uint64{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
			s.v6[k] = join(s.v6[k], owner)
		}
	}
	if p.MAC != (encap.MAC{}) {
		k := macKey(p.MAC)
		s.mac[k] = join(s.mac[k], owner)
	}
}

// join returns src with owner added.
func join(src *Source, owner uint32) *Source {
	if src == nil {
		return &Source{owners: []uint32{owner}}
	}
	if !slices.Contains(src.owners, owner) {
		src.owners = append(src.owners, owner)
	}
	return src
}
