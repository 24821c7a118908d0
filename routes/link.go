package routes

import (
	"fmt"
	"net/netip"
)

// LinkConfig is the kernel-side configuration of the overlay's TUN device,
// as flannel configures flannel.1.
type LinkConfig struct {
	// Name is the link (the TUN device) to configure. Required.
	Name string
	// MTU is the overlay MTU (1450 over a 1500-byte underlay). Zero leaves
	// the MTU alone.
	MTU int
	// Addr is the link's IPv4 address: our subnet's network address as a
	// /32 (10.244.62.0/32 for 10.244.62.0/24). Zero for none.
	Addr netip.Prefix
	// Network is the IPv4 overlay network (10.244.0.0/16), routed through
	// the link. Zero for none.
	Network netip.Prefix
	// IPv6Addr and IPv6Network are the IPv6 equivalents (the address is a
	// /128). Zero for none.
	IPv6Addr, IPv6Network netip.Prefix
}

func (c LinkConfig) validate() error {
	if c.Name == "" {
		return fmt.Errorf("routes: link name is empty")
	}
	if c.MTU < 0 || c.MTU > 65535 {
		return fmt.Errorf("routes: link %s: MTU %d out of range", c.Name, c.MTU)
	}
	check := func(field string, p netip.Prefix, want6 bool) error {
		if p == (netip.Prefix{}) {
			return nil
		}
		if !p.IsValid() || p.Addr().Is6() != want6 || p.Addr().Is4In6() {
			return fmt.Errorf("routes: link %s: %s %v is not a valid IPv%d prefix", c.Name, field, p, map[bool]int{false: 4, true: 6}[want6])
		}
		return nil
	}
	for _, f := range []struct {
		name string
		p    netip.Prefix
		six  bool
	}{{"Addr", c.Addr, false}, {"Network", c.Network, false}, {"IPv6Addr", c.IPv6Addr, true}, {"IPv6Network", c.IPv6Network, true}} {
		if err := check(f.name, f.p, f.six); err != nil {
			return err
		}
	}
	return nil
}
