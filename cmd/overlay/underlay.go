package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
)

// underlay is the node's side of the underlay network: the interface that
// carries VXLAN and the addresses other nodes reach us at.
type underlay struct {
	iface      net.Interface
	publicIP   netip.Addr // IPv4, published in the lease as PublicIP
	publicIPv6 netip.Addr // optional, published as PublicIPv6
}

// findUnderlay picks the underlay interface as flanneld does: the first
// --iface (a name or an address) that exists, else the first interface whose
// name or address matches an --iface-regex, else the interface of the
// default route. The public address is --public-ip, else the interface's
// first global IPv4 address.
func findUnderlay(ifaces, regexes []string, publicIP, publicIPv6 string) (underlay, error) {
	var u underlay
	all, err := net.Interfaces()
	if err != nil {
		return u, fmt.Errorf("list interfaces: %w", err)
	}
	found := false
	for _, spec := range ifaces {
		if ifi, ok := ifaceBySpec(all, spec); ok {
			u.iface, found = ifi, true
			break
		}
	}
	if !found && len(ifaces) > 0 && len(regexes) == 0 {
		return u, fmt.Errorf("--iface %s: no such interface or address on this node", strings.Join(ifaces, ","))
	}
	if !found && len(regexes) > 0 {
		res := make([]*regexp.Regexp, 0, len(regexes))
		for _, r := range regexes {
			re, err := regexp.Compile(r)
			if err != nil {
				return u, fmt.Errorf("--iface-regex %q: %w", r, err)
			}
			res = append(res, re)
		}
		if u.iface, found = ifaceByRegex(all, res); !found {
			return u, fmt.Errorf("--iface-regex %s: no interface name or address matches", strings.Join(regexes, ","))
		}
	}
	if !found {
		name, err := defaultRouteIface()
		if err != nil {
			return u, fmt.Errorf("no --iface given and %w; pass --iface", err)
		}
		ifi, ok := ifaceBySpec(all, name)
		if !ok {
			return u, fmt.Errorf("default route interface %q vanished; pass --iface", name)
		}
		u.iface = ifi
	}

	if publicIP != "" {
		a, err := netip.ParseAddr(publicIP)
		if err != nil || !a.Is4() {
			return u, fmt.Errorf("--public-ip %q: want an IPv4 address", publicIP)
		}
		u.publicIP = a
	} else {
		addrs, err := ifaceAddrs(u.iface)
		if err != nil {
			return u, err
		}
		for _, p := range addrs {
			if a := p.Addr(); a.Is4() && !a.IsLinkLocalUnicast() && !a.IsLoopback() {
				u.publicIP = a
				break
			}
		}
		if !u.publicIP.IsValid() {
			return u, fmt.Errorf("interface %s has no IPv4 address to publish; pass --public-ip", u.iface.Name)
		}
	}
	if publicIPv6 != "" {
		a, err := netip.ParseAddr(publicIPv6)
		if err != nil || !a.Is6() || a.Is4In6() {
			return u, fmt.Errorf("--public-ipv6 %q: want an IPv6 address", publicIPv6)
		}
		u.publicIPv6 = a
	}
	return u, nil
}

func ifaceAddrs(ifi net.Interface) ([]netip.Prefix, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", ifi.Name, err)
	}
	out := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if p, err := netip.ParsePrefix(ipn.String()); err == nil {
				out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()))
			}
		}
	}
	return out, nil
}

// ifaceBySpec finds an interface by name, or by one of its addresses.
func ifaceBySpec(all []net.Interface, spec string) (net.Interface, bool) {
	want, err := netip.ParseAddr(spec)
	for _, ifi := range all {
		if err != nil {
			if ifi.Name == spec {
				return ifi, true
			}
			continue
		}
		addrs, _ := ifaceAddrs(ifi)
		for _, p := range addrs {
			if p.Addr() == want.Unmap() {
				return ifi, true
			}
		}
	}
	return net.Interface{}, false
}

func ifaceByRegex(all []net.Interface, res []*regexp.Regexp) (net.Interface, bool) {
	for _, re := range res {
		for _, ifi := range all {
			if re.MatchString(ifi.Name) {
				return ifi, true
			}
			addrs, _ := ifaceAddrs(ifi)
			for _, p := range addrs {
				if re.MatchString(p.Addr().String()) {
					return ifi, true
				}
			}
		}
	}
	return net.Interface{}, false
}

var errNoDefaultRoute = errors.New("this node has no IPv4 default route")

// defaultRouteIface reads the kernel's IPv4 routing table for the default
// route's interface.
func defaultRouteIface() (string, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return "", errNoDefaultRoute
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// Iface Destination Gateway Flags RefCnt Use Metric Mask ...
		if len(fields) >= 8 && fields[1] == "00000000" && fields[7] == "00000000" {
			return fields[0], nil
		}
	}
	return "", errNoDefaultRoute
}
