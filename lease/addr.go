package lease

import (
	"encoding/binary"
	"math"
	"math/bits"
	"net/netip"
)

// u128 is an address as an unsigned integer (IPv4 uses the low 32 bits), for
// subnet arithmetic that netip does not offer.
type u128 struct{ hi, lo uint64 }

func toU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func fromU128(v u128, is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(v.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], v.hi)
	binary.BigEndian.PutUint64(b[8:], v.lo)
	return netip.AddrFrom16(b)
}

func (v u128) add(w u128) u128 {
	lo, c := bits.Add64(v.lo, w.lo, 0)
	hi, _ := bits.Add64(v.hi, w.hi, c)
	return u128{hi, lo}
}

func (v u128) sub(w u128) u128 {
	lo, b := bits.Sub64(v.lo, w.lo, 0)
	hi, _ := bits.Sub64(v.hi, w.hi, b)
	return u128{hi, lo}
}

func (v u128) shl(n uint) u128 {
	switch {
	case n == 0:
		return v
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{hi: v.lo << (n - 64)}
	}
	return u128{v.hi<<n | v.lo>>(64-n), v.lo << n}
}

func (v u128) shr(n uint) u128 {
	switch {
	case n == 0:
		return v
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{lo: v.hi >> (n - 64)}
	}
	return u128{v.hi >> n, v.lo>>n | v.hi<<(64-n)}
}

// addSubnets returns a + n subnets of length sl.
func addSubnets(a netip.Addr, sl int, n uint64) netip.Addr {
	step := u128{lo: n}.shl(uint(a.BitLen() - sl))
	return fromU128(toU128(a).add(step), a.Is4())
}

// subnetIndex returns how many subnets of length sl lie between lo and a
// (a >= lo), saturated at math.MaxInt64.
func subnetIndex(lo, a netip.Addr, sl int) uint64 {
	d := toU128(a).sub(toU128(lo)).shr(uint(a.BitLen() - sl))
	if d.hi != 0 || d.lo > math.MaxInt64 {
		return math.MaxInt64
	}
	return d.lo
}

// lastSubnet returns the address of the last subnet of length sl in n.
func lastSubnet(n netip.Prefix, sl int) netip.Addr {
	w := n.Addr().BitLen()
	ones := u128{math.MaxUint64, math.MaxUint64}
	host := ones.shr(uint(128 - w + n.Bits())) // low (w - n.Bits()) bits set
	last := fromU128(toU128(n.Addr()).add(host), n.Addr().Is4())
	return netip.PrefixFrom(last, sl).Masked().Addr()
}

// firstHost returns the first address after the subnet address, with the
// subnet's prefix length: 10.244.62.0/24 -> 10.244.62.1/24. flannel writes
// this form into subnet.env and assigns it to the bridge.
func firstHost(sn netip.Prefix) netip.Prefix {
	if !sn.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(sn.Masked().Addr().Next(), sn.Bits())
}
