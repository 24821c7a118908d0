package lease

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Lease is one node's subnet lease: the key <prefix>/subnets/<subnet> and the
// flannel attributes stored in it. A Lease is a value; the slices it holds are
// not modified once it is returned, so it may be shared between goroutines.
type Lease struct {
	// Key identifies the lease within its subnet manager: the full etcd key,
	// e.g. /coreos.com/network/subnets/10.244.62.0-24, or node/<name> for
	// the Kubernetes subnet manager.
	Key string
	// Node is the name of the Kubernetes Node the lease was read from (the
	// kube subnet manager); empty for etcd leases.
	Node string
	// Subnet is the node's IPv4 pod subnet (zero when IPv4 is disabled).
	Subnet netip.Prefix
	// IPv6Subnet is the node's IPv6 pod subnet (zero if none).
	IPv6Subnet netip.Prefix
	// PublicIP is the node's IPv4 underlay address: the outer destination of
	// VXLAN frames for the node (zero if none).
	PublicIP netip.Addr
	// PublicIPv6 is the node's IPv6 underlay address (zero if none).
	PublicIPv6 netip.Addr
	// BackendType is "vxlan" for every lease overlay acts on.
	BackendType string
	// VNI is BackendData.VNI (0 when the writer left it out; flannel does not
	// read it back, peers use the VNI of the network config).
	VNI uint32
	// VtepMAC is the MAC of the node's VTEP: the inner destination MAC of
	// IPv4 frames sent to it.
	VtepMAC net.HardwareAddr
	// IPv6VtepMAC is BackendV6Data.VtepMAC, the inner destination MAC of IPv6
	// frames (flannel's dual stack uses a second VTEP); nil if absent.
	IPv6VtepMAC net.HardwareAddr
	// Expiration is when the etcd lease ends, as far as the caller that
	// returned the Lease knows it (Acquire, List and Keep fill it in; Watch
	// snapshots leave it zero). It is zero for reservations.
	Expiration time.Time
	// EtcdLease is the etcd lease the key is bound to; 0 for a reservation
	// (a key written without a TTL by an operator).
	EtcdLease clientv3.LeaseID
	// ModRevision is the etcd revision that last wrote the key.
	ModRevision int64
}

// Reservation reports whether l is a key without a TTL. Reservations are
// used as they are and never turned into expiring leases.
func (l *Lease) Reservation() bool { return l.EtcdLease == 0 }

// Equal reports whether l and m describe the same key with the same
// attributes (Expiration and ModRevision are not compared).
func (l *Lease) Equal(m *Lease) bool {
	return l.Key == m.Key && l.Node == m.Node && l.Subnet == m.Subnet && l.IPv6Subnet == m.IPv6Subnet &&
		l.PublicIP == m.PublicIP && l.PublicIPv6 == m.PublicIPv6 &&
		l.BackendType == m.BackendType && l.VNI == m.VNI &&
		bytes.Equal(l.VtepMAC, m.VtepMAC) && bytes.Equal(l.IPv6VtepMAC, m.IPv6VtepMAC) &&
		l.EtcdLease == m.EtcdLease
}

// String returns a short description for logs.
func (l *Lease) String() string {
	var b strings.Builder
	if l.Subnet.IsValid() {
		b.WriteString(l.Subnet.String())
	}
	if l.IPv6Subnet.IsValid() {
		if b.Len() > 0 {
			b.WriteByte('+')
		}
		b.WriteString(l.IPv6Subnet.String())
	}
	b.WriteString(" via ")
	if l.PublicIP.IsValid() {
		b.WriteString(l.PublicIP.String())
	} else {
		b.WriteString(l.PublicIPv6.String())
	}
	if l.VtepMAC != nil {
		b.WriteString(" mac ")
		b.WriteString(l.VtepMAC.String())
	}
	return b.String()
}

// SubnetKey returns the name of a lease key below <prefix>/subnets/ in
// flannel's layout: "10.244.62.0-24", "10.244.62.0-24&fc00::-64" in dual
// stack, and "0.0.0.0-0&fc00::-64" when only IPv6 is enabled (flannel writes
// the zero IPv4 network there).
func SubnetKey(sn, sn6 netip.Prefix) string {
	v4 := "0.0.0.0-0"
	if sn.IsValid() {
		v4 = sn.Addr().String() + "-" + strconv.Itoa(sn.Bits())
	}
	if !sn6.IsValid() {
		return v4
	}
	return v4 + "&" + sn6.Addr().String() + "-" + strconv.Itoa(sn6.Bits())
}

// errKey is returned by ParseSubnetKey.
var errKey = errors.New("not a subnet key such as 10.244.62.0-24 or 10.244.62.0-24&fc00::-64")

// ParseSubnetKey parses the name of a lease key (the part after
// <prefix>/subnets/). It is strict: addresses in canonical form, subnet
// addresses without host bits, so that one subnet has exactly one key.
// sn is zero for an IPv6-only key, sn6 is zero for an IPv4-only key.
func ParseSubnetKey(name string) (sn, sn6 netip.Prefix, err error) {
	v4, v6, dual := strings.Cut(name, "&")
	sn, err = parseKeyPart(v4, true)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: %w", name, errKey)
	}
	if dual {
		sn6, err = parseKeyPart(v6, false)
		if err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: %w", name, errKey)
		}
	}
	if sn.Bits() == 0 {
		// 0.0.0.0-0 is flannel's placeholder for "no IPv4" and only valid
		// in front of an IPv6 subnet.
		if !sn6.IsValid() || sn.Addr() != netip.IPv4Unspecified() {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("subnet key %q: %w", name, errKey)
		}
		sn = netip.Prefix{}
	}
	return sn, sn6, nil
}

func parseKeyPart(s string, want4 bool) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.Prefix{}, errKey
	}
	a, err := netip.ParseAddr(s[:i])
	var buf [48]byte // canonical form without allocating: one subnet, one key
	if err != nil || a.Is4() != want4 || a.Zone() != "" || a.Is4In6() || string(a.AppendTo(buf[:0])) != s[:i] {
		return netip.Prefix{}, errKey
	}
	ls := s[i+1:]
	if ls == "" || len(ls) > 3 || (len(ls) > 1 && ls[0] == '0') {
		return netip.Prefix{}, errKey
	}
	n := 0
	for _, c := range []byte(ls) {
		if c < '0' || c > '9' {
			return netip.Prefix{}, errKey
		}
		n = n*10 + int(c-'0')
	}
	p, err := a.Prefix(n)
	if err != nil || p.Addr() != a || p.Bits() != n {
		return netip.Prefix{}, errKey
	}
	return p, nil
}

// leaseValue is flannel's LeaseAttrs JSON, field for field and in flannel's
// order, so that encoding/json produces the exact bytes flannel writes.
type leaseValue struct {
	PublicIP      string
	PublicIPv6    *string
	BackendType   string
	BackendData   *vxlanData `json:",omitempty"`
	BackendV6Data *vxlanData `json:",omitempty"`
}

type vxlanData struct {
	VNI     uint32
	VtepMAC string `json:",omitempty"`
}

// leaseValueIn is what is accepted when reading: any BackendData shape.
type leaseValueIn struct {
	PublicIP      *string
	PublicIPv6    *string
	BackendType   string
	BackendData   json.RawMessage
	BackendV6Data json.RawMessage
}

// encodeValue returns l's etcd value in flannel's exact shape, e.g.
// {"PublicIP":"172.30.250.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d6"}}.
func encodeValue(l *Lease) ([]byte, error) {
	v := leaseValue{PublicIP: "0.0.0.0", BackendType: l.BackendType}
	if l.PublicIP.IsValid() {
		v.PublicIP = l.PublicIP.String()
	}
	if l.PublicIPv6.IsValid() {
		s := l.PublicIPv6.String()
		v.PublicIPv6 = &s
	}
	if l.VtepMAC != nil || l.VNI != 0 {
		v.BackendData = &vxlanData{VNI: l.VNI}
		if l.VtepMAC != nil {
			v.BackendData.VtepMAC = l.VtepMAC.String()
		}
	}
	if l.IPv6VtepMAC != nil {
		v.BackendV6Data = &vxlanData{VNI: l.VNI, VtepMAC: l.IPv6VtepMAC.String()}
	}
	return jsonMarshal(v)
}

// jsonMarshal is json.Marshal; the indirection keeps every encoder of
// flannel's values in this file.
func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// decodeLease parses a key and value read from etcd. name is the key below
// <prefix>/subnets/. The caller sets Key, EtcdLease, ModRevision.
func decodeLease(name string, value []byte) (Lease, error) {
	var l Lease
	var err error
	l.Subnet, l.IPv6Subnet, err = ParseSubnetKey(name)
	if err != nil {
		return Lease{}, err
	}
	var in leaseValueIn
	if err := json.Unmarshal(value, &in); err != nil {
		return Lease{}, fmt.Errorf("value is not lease JSON: %w", err)
	}
	if in.PublicIP != nil && *in.PublicIP != "" {
		a, err := netip.ParseAddr(*in.PublicIP)
		if err != nil || !a.Is4() {
			return Lease{}, fmt.Errorf("PublicIP %q is not an IPv4 address", *in.PublicIP)
		}
		if !a.IsUnspecified() {
			l.PublicIP = a
		}
	}
	if in.PublicIPv6 != nil && *in.PublicIPv6 != "" {
		a, err := netip.ParseAddr(*in.PublicIPv6)
		if err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
			return Lease{}, fmt.Errorf("PublicIPv6 %q is not an IPv6 address", *in.PublicIPv6)
		}
		if !a.IsUnspecified() {
			l.PublicIPv6 = a
		}
	}
	if !l.PublicIP.IsValid() && !l.PublicIPv6.IsValid() {
		return Lease{}, errors.New("neither PublicIP nor PublicIPv6 is set")
	}
	l.BackendType = in.BackendType
	if in.BackendType != BackendVXLAN {
		// Another backend's data is none of our business.
		return l, nil
	}
	vni, mac, err := decodeVXLANData("BackendData", in.BackendData)
	if err != nil {
		return Lease{}, err
	}
	l.VNI, l.VtepMAC = vni, mac
	if len(bytes.TrimSpace(in.BackendV6Data)) > 0 {
		_, mac6, err := decodeVXLANData("BackendV6Data", in.BackendV6Data)
		if err != nil {
			return Lease{}, err
		}
		l.IPv6VtepMAC = mac6
	}
	// A vxlan lease without a VtepMAC (an operator's reservation, say) is
	// decoded: it still names its node. Watch skips it as a peer until the
	// node writes its MAC (see peerProblem).
	return l, nil
}

// peerProblem says why l cannot be programmed as a vxlan peer, or "".
func peerProblem(l *Lease) string {
	switch {
	case l.Subnet.IsValid() && l.VtepMAC == nil:
		return "BackendData.VtepMAC is missing"
	case !l.Subnet.IsValid() && l.IPv6VtepMAC == nil && l.VtepMAC == nil:
		return "BackendV6Data.VtepMAC is missing"
	case l.Subnet.IsValid() && !l.PublicIP.IsValid():
		return "PublicIP is missing for an IPv4 subnet"
	case l.IPv6Subnet.IsValid() && !l.Subnet.IsValid() && !l.PublicIPv6.IsValid():
		return "PublicIPv6 is missing for an IPv6 subnet"
	}
	return ""
}

func decodeVXLANData(field string, raw json.RawMessage) (uint32, net.HardwareAddr, error) {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return 0, nil, nil
	}
	var d struct {
		VNI     *json.Number
		VtepMAC *string
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&d); err != nil {
		return 0, nil, fmt.Errorf("%s is not a vxlan object: %w", field, err)
	}
	var vni uint32
	if d.VNI != nil {
		v, err := d.VNI.Int64()
		if err != nil || v < 0 || v > maxVNI {
			return 0, nil, fmt.Errorf("%s.VNI %s is not a VNI", field, d.VNI)
		}
		vni = uint32(v)
	}
	if d.VtepMAC == nil {
		return vni, nil, nil
	}
	mac, err := net.ParseMAC(*d.VtepMAC)
	if err != nil || len(mac) != 6 {
		return 0, nil, fmt.Errorf("%s.VtepMAC %q is not an Ethernet MAC", field, *d.VtepMAC)
	}
	return vni, mac, nil
}
