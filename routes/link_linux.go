package routes

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Link is a link configured by ConfigureLink. It remembers exactly what it
// changed, so Remove undoes that and nothing else. Its methods are safe for
// concurrent use.
type Link struct {
	name string

	mu        sync.Mutex // guards the fields below
	h         *netlink.Handle
	addrs     []*netlink.Addr
	routes    []*netlink.Route
	oldMTU    int // restored by Remove if nonzero
	broughtUp bool
}

// ConfigureLink sets the link's MTU, adds its addresses, brings it up and
// routes the overlay networks through it, in the network namespace of the
// calling thread (the Link keeps a netlink handle in that namespace, so
// Remove may run on any thread).
//
// It is idempotent: an address or route that is already there is left alone
// and not recorded, so Remove will not delete it. A route to the same
// network through another link is an error (something else, perhaps a
// kernel flannel.1, owns that network); on any error, ConfigureLink undoes
// what it did before returning.
func ConfigureLink(cfg LinkConfig) (*Link, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("routes: netlink handle: %w", err)
	}
	l := &Link{name: cfg.Name, h: h}
	if err := l.configure(cfg); err != nil {
		if rerr := l.Remove(); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return nil, err
	}
	return l, nil
}

func (l *Link) configure(cfg LinkConfig) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	link, err := l.h.LinkByName(cfg.Name)
	if err != nil {
		return fmt.Errorf("routes: find link %s: %w", cfg.Name, err)
	}
	attrs := link.Attrs()
	if cfg.MTU != 0 && attrs.MTU != cfg.MTU {
		if err := l.h.LinkSetMTU(link, cfg.MTU); err != nil {
			return fmt.Errorf("routes: set MTU %d on %s: %w", cfg.MTU, cfg.Name, err)
		}
		l.oldMTU = attrs.MTU
	}
	for _, a := range []netip.Prefix{cfg.Addr, cfg.IPv6Addr} {
		if a == (netip.Prefix{}) {
			continue
		}
		if err := l.addAddr(link, a); err != nil {
			return err
		}
	}
	if cfg.IPv6Addr == (netip.Prefix{}) && cfg.IPv6Network == (netip.Prefix{}) && attrs.Flags&net.FlagUp == 0 {
		// An overlay without IPv6 keeps the kernel from giving the link a
		// link-local address, whose router solicitations and MLD reports
		// would only reach the datapath to be dropped as unroutable. Set
		// before the link goes up, so none is ever sent; not undone by
		// Remove, as the device is the overlay's own (ip link set addrgenmode
		// none). A kernel without IPv6 refuses it, which is as good.
		_ = l.h.LinkSetIP6AddrGenMode(link, addrGenModeNone)
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := l.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("routes: bring %s up: %w", cfg.Name, err)
		}
		l.broughtUp = true
	}
	for _, n := range []netip.Prefix{cfg.Network, cfg.IPv6Network} {
		if n == (netip.Prefix{}) {
			continue
		}
		if err := l.addRoute(link, n.Masked()); err != nil {
			return err
		}
	}
	return nil
}

// addrGenModeNone is IN6_ADDR_GEN_MODE_NONE from <linux/if_link.h>.
const addrGenModeNone = 1

func family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (l *Link) addAddr(link netlink.Link, p netip.Prefix) error {
	have, err := l.h.AddrList(link, family(p))
	if err != nil {
		return fmt.Errorf("routes: list addresses of %s: %w", l.name, err)
	}
	for _, a := range have {
		ap, ok := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		if ok && ap.Unmap() == p.Addr() && ones == p.Bits() {
			return nil // already there, not ours to remove
		}
	}
	addr := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		// No duplicate address detection: the address is ours alone by lease.
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := l.h.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("routes: add address %v to %s: %w", p, l.name, err)
	}
	l.addrs = append(l.addrs, addr)
	return nil
}

func (l *Link) addRoute(link netlink.Link, n netip.Prefix) error {
	filter := &netlink.Route{Dst: ipNet(n), Table: unix.RT_TABLE_MAIN}
	have, err := l.h.RouteListFiltered(family(n), filter, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("routes: list routes to %v: %w", n, err)
	}
	for _, r := range have {
		if r.LinkIndex == link.Attrs().Index {
			return nil // already routed through us, not ours to remove
		}
	}
	if len(have) > 0 {
		other := fmt.Sprintf("index %d", have[0].LinkIndex)
		if ol, err := l.h.LinkByIndex(have[0].LinkIndex); err == nil {
			other = ol.Attrs().Name
		}
		return fmt.Errorf("routes: route to %v already exists through link %s, not %s", n, other, l.name)
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       ipNet(n),
		Scope:     netlink.SCOPE_LINK,
		Table:     unix.RT_TABLE_MAIN,
	}
	if err := l.h.RouteAdd(route); err != nil {
		return fmt.Errorf("routes: route %v through %s: %w", n, l.name, err)
	}
	l.routes = append(l.routes, route)
	return nil
}

// Name returns the link's name.
func (l *Link) Name() string { return l.name }

// Remove undoes what ConfigureLink did: it deletes the routes and addresses
// it added, takes the link down if it brought it up, and restores the MTU it
// changed. A link that no longer exists (a TUN device disappears when its
// file is closed) has nothing left to undo. Remove is idempotent.
func (l *Link) Remove() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h == nil {
		return nil
	}
	defer func() {
		l.h.Close()
		l.h = nil
		l.addrs, l.routes, l.oldMTU, l.broughtUp = nil, nil, 0, false
	}()
	link, err := l.h.LinkByName(l.name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("routes: find link %s: %w", l.name, err)
	}
	var errs []error
	for _, r := range l.routes {
		if err := l.h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("routes: delete route %v: %w", r.Dst, err))
		}
	}
	for _, a := range l.addrs {
		if err := l.h.AddrDel(link, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("routes: delete address %v from %s: %w", a.IPNet, l.name, err))
		}
	}
	if l.broughtUp {
		if err := l.h.LinkSetDown(link); err != nil {
			errs = append(errs, fmt.Errorf("routes: take %s down: %w", l.name, err))
		}
	}
	if l.oldMTU != 0 {
		if err := l.h.LinkSetMTU(link, l.oldMTU); err != nil {
			errs = append(errs, fmt.Errorf("routes: restore MTU %d on %s: %w", l.oldMTU, l.name, err))
		}
	}
	return errors.Join(errs...)
}
