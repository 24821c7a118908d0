package kube

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"overlay/lease"
)

// DefaultPrefix is flanneld's --kube-annotation-prefix default.
const DefaultPrefix = "flannel.alpha.coreos.com"

// Keys are the names of flannel's Node annotations below one prefix. The
// zero value is not usable; call NewKeys.
type Keys struct {
	Managed             string // <prefix>/kube-subnet-manager: "true"
	BackendType         string // <prefix>/backend-type: "vxlan"
	BackendData         string // <prefix>/backend-data: {"VNI":1,"VtepMAC":"..."}
	BackendV6Data       string // <prefix>/backend-v6-data
	PublicIP            string // <prefix>/public-ip
	PublicIPv6          string // <prefix>/public-ipv6
	PublicIPOverwrite   string // <prefix>/public-ip-overwrite, set by operators
	PublicIPv6Overwrite string // <prefix>/public-ipv6-overwrite
}

// prefixRE is the shape flanneld accepts once the prefix is normalised: a
// DNS name, one slash, optionally a name part ending in "-".
var prefixRE = regexp.MustCompile(`^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`)

// NewKeys returns the annotation keys for prefix as flanneld builds them:
// "flannel.alpha.coreos.com" gives "flannel.alpha.coreos.com/public-ip",
// and a prefix with a name part, "example.com/net", gives
// "example.com/net-public-ip".
func NewKeys(prefix string) (Keys, error) {
	p := prefix
	switch strings.Count(p, "/") {
	case 0:
		p += "/"
	case 1:
	default:
		return Keys{}, fmt.Errorf("annotation prefix %q: at most one slash is allowed", prefix)
	}
	if !strings.HasSuffix(p, "/") && !strings.HasSuffix(p, "-") {
		p += "-"
	}
	if !prefixRE.MatchString(p) {
		return Keys{}, fmt.Errorf("annotation prefix %q: want a lowercase DNS name, optionally followed by /name (such as %s)", prefix, DefaultPrefix)
	}
	return Keys{
		Managed:             p + "kube-subnet-manager",
		BackendType:         p + "backend-type",
		BackendData:         p + "backend-data",
		BackendV6Data:       p + "backend-v6-data",
		PublicIP:            p + "public-ip",
		PublicIPv6:          p + "public-ipv6",
		PublicIPOverwrite:   p + "public-ip-overwrite",
		PublicIPv6Overwrite: p + "public-ipv6-overwrite",
	}, nil
}

// Own describes what this node publishes on its Node.
type Own struct {
	// PublicIP and PublicIPv6 are the addresses peers send to (for each
	// family the config enables), after any public-ip-overwrite.
	PublicIP, PublicIPv6 netip.Addr
	VNI                  uint32
	VtepMAC              net.HardwareAddr
}

// Annotations returns the annotations this node publishes, with the values
// flanneld writes: backend-type, backend-data and public-ip when the config
// enables IPv4, backend-v6-data and public-ipv6 when it enables IPv6, and
// kube-subnet-manager "true". The overwrite annotations are the operator's
// and never written.
func (k Keys) Annotations(cfg *lease.Config, o Own) (map[string]string, error) {
	a := map[string]string{
		k.BackendType: lease.BackendVXLAN,
		k.Managed:     "true",
	}
	bd, err := lease.EncodeBackendData(o.VNI, o.VtepMAC)
	if err != nil {
		return nil, err
	}
	if cfg.EnableIPv4 {
		if !o.PublicIP.Is4() {
			return nil, fmt.Errorf("public IPv4 address %v is not usable (the config enables IPv4)", o.PublicIP)
		}
		a[k.BackendData] = string(bd)
		a[k.PublicIP] = o.PublicIP.String()
	}
	if cfg.EnableIPv6 {
		if !o.PublicIPv6.Is6() || o.PublicIPv6.Is4In6() {
			return nil, fmt.Errorf("public IPv6 address %v is not usable (the config enables IPv6)", o.PublicIPv6)
		}
		a[k.BackendV6Data] = string(bd)
		a[k.PublicIPv6] = o.PublicIPv6.String()
	}
	return a, nil
}

// patch returns a strategic merge patch that sets want on a Node's
// metadata.annotations and leaves every other field and annotation alone,
// or nil when the Node already has them all.
func patch(have, want map[string]string) ([]byte, error) {
	diff := map[string]string{}
	for k, v := range want {
		if cur, ok := have[k]; !ok || cur != v {
			diff[k] = v
		}
	}
	if len(diff) == 0 {
		return nil, nil
	}
	type meta struct {
		Annotations map[string]string `json:"annotations"`
	}
	return json.Marshal(struct {
		Metadata meta `json:"metadata"`
	}{meta{diff}})
}

// errNotManaged means a Node carries no flannel lease (no
// kube-subnet-manager "true" annotation yet): it is not a peer, and not
// malformed either.
var errNotManaged = errors.New("node has no flannel annotations")

// errOtherBackend means a Node's backend-type is not vxlan; like leases of
// other backends in etcd it is ignored.
var errOtherBackend = errors.New("node's backend-type is not vxlan")

// PodCIDRs returns a Node's IPv4 and IPv6 pod CIDRs from spec.podCIDRs,
// or spec.podCIDR when the list is empty; zero for a family it lacks.
func PodCIDRs(n *corev1.Node) (v4, v6 netip.Prefix, err error) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	if len(cidrs) > 2 {
		return v4, v6, fmt.Errorf("spec.podCIDRs %v: want one CIDR per address family", cidrs)
	}
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Zone() != "" {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("pod CIDR %q is not a CIDR", s)
		}
		p = p.Masked()
		switch {
		case p.Addr().Is4() && !v4.IsValid():
			v4 = p
		case p.Addr().Is6() && !p.Addr().Is4In6() && !v6.IsValid():
			v6 = p
		default:
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("spec.podCIDRs %v: want one CIDR per address family", cidrs)
		}
	}
	return v4, v6, nil
}

// checkSubnets says whether the pod CIDRs fit the network config: one for
// each enabled family, inside its network.
func checkSubnets(cfg *lease.Config, v4, v6 netip.Prefix) error {
	if cfg.EnableIPv4 {
		if !v4.IsValid() {
			return errors.New("no IPv4 pod CIDR, and the network config enables IPv4")
		}
		if v4.Bits() < cfg.Network.Bits() || !cfg.Network.Contains(v4.Addr()) {
			return fmt.Errorf("pod CIDR %s is outside the network config's Network %s", v4, cfg.Network)
		}
	}
	if cfg.EnableIPv6 {
		if !v6.IsValid() {
			return errors.New("no IPv6 pod CIDR, and the network config enables IPv6")
		}
		if v6.Bits() < cfg.IPv6Network.Bits() || !cfg.IPv6Network.Contains(v6.Addr()) {
			return fmt.Errorf("IPv6 pod CIDR %s is outside the network config's IPv6Network %s", v6, cfg.IPv6Network)
		}
	}
	return nil
}

// NodeLease turns another node's Node into a peer lease, as a flanneld peer
// reads it: only Nodes with kube-subnet-manager "true" and backend-type
// vxlan are peers; the pod CIDRs come from the spec, the public address
// from public-ip-overwrite if it is set (the operator's word wins, as in
// flanneld) else public-ip, the VtepMAC from backend-data; the same for
// IPv6 when the config enables it. A Node that is not a peer gives an
// error matching errNotManaged or errOtherBackend; one that claims to be
// a peer but cannot be used gives an error saying why.
func (k Keys) NodeLease(n *corev1.Node, cfg *lease.Config) (lease.Lease, error) {
	an := n.Annotations
	if an[k.Managed] != "true" {
		return lease.Lease{}, errNotManaged
	}
	if bt := an[k.BackendType]; bt != lease.BackendVXLAN {
		return lease.Lease{}, fmt.Errorf("%w (%s %q)", errOtherBackend, k.BackendType, bt)
	}
	l := lease.Lease{Key: "node/" + n.Name, Node: n.Name, BackendType: lease.BackendVXLAN}
	v4, v6, err := PodCIDRs(n)
	if err != nil {
		return lease.Lease{}, err
	}
	if err := checkSubnets(cfg, v4, v6); err != nil {
		return lease.Lease{}, err
	}
	if cfg.EnableIPv4 {
		l.Subnet = v4
		if l.PublicIP, err = publicIP(an, k.PublicIPOverwrite, k.PublicIP, true); err != nil {
			return lease.Lease{}, err
		}
		if l.VNI, l.VtepMAC, err = backendData(an, k.BackendData, cfg.Backend.VNI); err != nil {
			return lease.Lease{}, err
		}
	}
	if cfg.EnableIPv6 {
		l.IPv6Subnet = v6
		if l.PublicIPv6, err = publicIP(an, k.PublicIPv6Overwrite, k.PublicIPv6, false); err != nil {
			return lease.Lease{}, err
		}
		var vni uint32
		if vni, l.IPv6VtepMAC, err = backendData(an, k.BackendV6Data, cfg.Backend.VNI); err != nil {
			return lease.Lease{}, err
		}
		if l.VNI == 0 {
			l.VNI = vni
		}
	}
	return l, nil
}

func publicIP(an map[string]string, overwrite, key string, want4 bool) (netip.Addr, error) {
	family := "IPv6"
	if want4 {
		family = "IPv4"
	}
	for _, k := range []string{overwrite, key} {
		s, ok := an[k]
		if !ok || s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Is4() != want4 || a.Is4In6() || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			return netip.Addr{}, fmt.Errorf("%s %q is not a unicast %s address", k, s, family)
		}
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("%s is missing", key)
}

func backendData(an map[string]string, key string, vni uint32) (uint32, net.HardwareAddr, error) {
	s, ok := an[key]
	if !ok || s == "" {
		return 0, nil, fmt.Errorf("%s is missing", key)
	}
	got, mac, err := lease.DecodeBackendData([]byte(s))
	if err != nil {
		return 0, nil, fmt.Errorf("%s %q: %w", key, s, err)
	}
	if mac == nil {
		return 0, nil, fmt.Errorf("%s %q has no VtepMAC", key, s)
	}
	if mac[0]&1 != 0 || (mac[0]|mac[1]|mac[2]|mac[3]|mac[4]|mac[5]) == 0 {
		return 0, nil, fmt.Errorf("%s %q: VtepMAC %s is not a unicast MAC", key, s, mac)
	}
	if got != 0 && got != vni {
		return 0, nil, fmt.Errorf("%s %q: VNI %d, but the network config's is %d", key, s, got, vni)
	}
	return got, mac, nil
}
