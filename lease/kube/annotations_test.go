package kube

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"overlay/lease"
)

func mustConfig(t testing.TB, js string) *lease.Config {
	t.Helper()
	c, err := lease.ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const (
	netConf     = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`
	netConfDual = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}`
)

func goldenNode(t testing.TB) *corev1.Node {
	t.Helper()
	data, err := os.ReadFile("testdata/flanneld-node.json")
	if err != nil {
		t.Fatal(err)
	}
	var n corev1.Node
	if err := json.Unmarshal(data, &n); err != nil {
		t.Fatal(err)
	}
	return &n
}

func TestNewKeys(t *testing.T) {
	for _, tc := range []struct{ prefix, publicIP string }{
		{"flannel.alpha.coreos.com", "flannel.alpha.coreos.com/public-ip"},
		{"flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/public-ip"},
		{"example.com/net", "example.com/net-public-ip"},
		{"example.com/net-", "example.com/net-public-ip"},
		{"a.b_c.io", "a.b_c.io/public-ip"},
	} {
		k, err := NewKeys(tc.prefix)
		if err != nil {
			t.Errorf("NewKeys(%q): %v", tc.prefix, err)
			continue
		}
		if k.PublicIP != tc.publicIP {
			t.Errorf("NewKeys(%q).PublicIP = %q, want %q", tc.prefix, k.PublicIP, tc.publicIP)
		}
		if !strings.HasSuffix(k.PublicIPOverwrite, "public-ip-overwrite") || !strings.HasSuffix(k.Managed, "kube-subnet-manager") {
			t.Errorf("NewKeys(%q) = %+v", tc.prefix, k)
		}
	}
	for _, bad := range []string{"", "nodots", "a.com/b/c", "Flannel.com", "a.com/x y", "/a"} {
		if _, err := NewKeys(bad); err == nil {
			t.Errorf("NewKeys(%q) accepted", bad)
		}
	}
}

// TestAnnotationsGolden checks that we write flanneld's annotations byte
// for byte: the Node of testdata/flanneld-node.json, as flanneld left it.
func TestAnnotationsGolden(t *testing.T) {
	n := goldenNode(t)
	k, _ := NewKeys(DefaultPrefix)
	mac, _ := net.ParseMAC("ee:43:f0:12:f0:3f")
	got, err := k.Annotations(mustConfig(t, netConf), Own{PublicIP: netip.MustParseAddr("10.192.220.94"), VNI: 1, VtepMAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Errorf("%d annotations, want flanneld's 4: %v", len(got), got)
	}
	for key, v := range got {
		if want, ok := n.Annotations[key]; !ok || want != v {
			t.Errorf("annotation %s = %q, flanneld wrote %q", key, v, want)
		}
	}
	if b, _ := patch(n.Annotations, got); b != nil {
		t.Errorf("patch for flanneld's own Node = %s, want none", b)
	}

	// Dual stack adds backend-v6-data and public-ipv6 in the same shape.
	got, err = k.Annotations(mustConfig(t, netConfDual), Own{
		PublicIP: netip.MustParseAddr("10.192.220.94"), PublicIPv6: netip.MustParseAddr("fd00::94"), VNI: 1, VtepMAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	if got[k.BackendV6Data] != `{"VNI":1,"VtepMAC":"ee:43:f0:12:f0:3f"}` || got[k.PublicIPv6] != "fd00::94" || len(got) != 6 {
		t.Errorf("dual-stack annotations %v", got)
	}
	// IPv6 only: no IPv4 data at all.
	got, err = k.Annotations(mustConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}`),
		Own{PublicIPv6: netip.MustParseAddr("fd00::94"), VNI: 1, VtepMAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got[k.BackendData]; ok || got[k.PublicIP] != "" || len(got) != 4 {
		t.Errorf("IPv6-only annotations %v", got)
	}
	if _, err := k.Annotations(mustConfig(t, netConf), Own{VNI: 1, VtepMAC: mac}); err == nil {
		t.Error("annotations without a public IPv4 address accepted")
	}
}

func TestPatchOnlyDiffers(t *testing.T) {
	have := map[string]string{"a": "1", "b": "2", "other": "x"}
	b, err := patch(have, map[string]string{"a": "1", "b": "3", "c": "4"})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"metadata":{"annotations":{"b":"3","c":"4"}}}` {
		t.Errorf("patch = %s", b)
	}
	if b, _ := patch(have, map[string]string{"a": "1"}); b != nil {
		t.Errorf("patch without a difference = %s", b)
	}
}

// TestNodeLeaseGolden reads flanneld's Node as a peer.
func TestNodeLeaseGolden(t *testing.T) {
	k, _ := NewKeys(DefaultPrefix)
	l, err := k.NodeLease(goldenNode(t), mustConfig(t, netConf))
	if err != nil {
		t.Fatal(err)
	}
	if l.Node != "worker0" || l.Key != "node/worker0" || l.Subnet != netip.MustParsePrefix("10.244.1.0/24") ||
		l.PublicIP != netip.MustParseAddr("10.192.220.94") || l.VtepMAC.String() != "ee:43:f0:12:f0:3f" ||
		l.VNI != 1 || l.BackendType != "vxlan" || l.IPv6Subnet.IsValid() {
		t.Errorf("lease %+v", l)
	}
}

func node(name string, cidrs []string, an map[string]string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: an, ResourceVersion: "1"}}
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
		n.Spec.PodCIDRs = cidrs
	}
	return n
}

func peerAnnotations(ip, data string) map[string]string {
	p := DefaultPrefix + "/"
	return map[string]string{
		p + "kube-subnet-manager": "true", p + "backend-type": "vxlan",
		p + "backend-data": data, p + "public-ip": ip,
	}
}

func TestNodeLeaseMalformedAndIgnored(t *testing.T) {
	k, _ := NewKeys(DefaultPrefix)
	cfg := mustConfig(t, netConf)
	good := `{"VNI":1,"VtepMAC":"ee:43:f0:12:f0:3f"}`
	with := func(an map[string]string, key, v string) map[string]string {
		an[DefaultPrefix+"/"+key] = v
		return an
	}
	without := func(an map[string]string, key string) map[string]string {
		delete(an, DefaultPrefix+"/"+key)
		return an
	}
	cidr := []string{"10.244.7.0/24"}
	for _, tc := range []struct {
		name string
		n    *corev1.Node
		is   error // errNotManaged, errOtherBackend, or nil for "malformed"
		msg  string
	}{
		{"no annotations", node("a", cidr, nil), errNotManaged, ""},
		{"not managed", node("a", cidr, with(peerAnnotations("172.30.250.7", good), "kube-subnet-manager", "false")), errNotManaged, ""},
		{"host-gw", node("a", cidr, with(peerAnnotations("172.30.250.7", good), "backend-type", "host-gw")), errOtherBackend, ""},
		{"bad JSON", node("a", cidr, peerAnnotations("172.30.250.7", `{"VNI":1,"VtepMAC":`)), nil, "backend-data"},
		{"bad MAC", node("a", cidr, peerAnnotations("172.30.250.7", `{"VNI":1,"VtepMAC":"zz:43:f0:12:f0:3f"}`)), nil, "VtepMAC"},
		{"multicast MAC", node("a", cidr, peerAnnotations("172.30.250.7", `{"VNI":1,"VtepMAC":"01:00:5e:12:f0:3f"}`)), nil, "unicast"},
		{"no MAC", node("a", cidr, peerAnnotations("172.30.250.7", `{"VNI":1}`)), nil, "VtepMAC"},
		{"wrong VNI", node("a", cidr, peerAnnotations("172.30.250.7", `{"VNI":2,"VtepMAC":"ee:43:f0:12:f0:3f"}`)), nil, "VNI 2"},
		{"no backend-data", node("a", cidr, without(peerAnnotations("172.30.250.7", good), "backend-data")), nil, "backend-data is missing"},
		{"no public-ip", node("a", cidr, without(peerAnnotations("172.30.250.7", good), "public-ip")), nil, "public-ip is missing"},
		{"bad public-ip", node("a", cidr, peerAnnotations("172.30.250.x", good)), nil, "public-ip"},
		{"IPv6 public-ip", node("a", cidr, peerAnnotations("fd00::7", good)), nil, "IPv4"},
		{"bad overwrite", node("a", cidr, with(peerAnnotations("172.30.250.7", good), "public-ip-overwrite", "nope")), nil, "public-ip-overwrite"},
		{"no podCIDR", node("a", nil, peerAnnotations("172.30.250.7", good)), nil, "no IPv4 pod CIDR"},
		{"bad podCIDR", node("a", []string{"10.244.7.0/33"}, peerAnnotations("172.30.250.7", good)), nil, "not a CIDR"},
		{"podCIDR outside", node("a", []string{"10.99.7.0/24"}, peerAnnotations("172.30.250.7", good)), nil, "outside"},
		{"three podCIDRs", node("a", []string{"10.244.7.0/24", "fc00::/64", "10.244.8.0/24"}, peerAnnotations("172.30.250.7", good)), nil, "one CIDR per"},
	} {
		_, err := k.NodeLease(tc.n, cfg)
		switch {
		case err == nil:
			t.Errorf("%s: accepted", tc.name)
		case tc.is != nil && !errors.Is(err, tc.is):
			t.Errorf("%s: %v, want %v", tc.name, err, tc.is)
		case tc.is == nil && (errors.Is(err, errNotManaged) || errors.Is(err, errOtherBackend)):
			t.Errorf("%s: %v, want a malformed-peer error", tc.name, err)
		case tc.is == nil && !strings.Contains(err.Error(), tc.msg):
			t.Errorf("%s: %v, want it to mention %q", tc.name, err, tc.msg)
		}
	}
}

func TestNodeLeaseOverwriteWins(t *testing.T) {
	k, _ := NewKeys(DefaultPrefix)
	an := peerAnnotations("172.30.250.7", `{"VNI":1,"VtepMAC":"ee:43:f0:12:f0:3f"}`)
	an[k.PublicIPOverwrite] = "192.0.2.7"
	l, err := k.NodeLease(node("b", []string{"10.244.7.0/24"}, an), mustConfig(t, netConf))
	if err != nil {
		t.Fatal(err)
	}
	if l.PublicIP != netip.MustParseAddr("192.0.2.7") {
		t.Errorf("PublicIP %v, want the overwrite 192.0.2.7", l.PublicIP)
	}
	// A VNI left out is accepted (flannel peers do not read it back).
	an = peerAnnotations("172.30.250.7", `{"VtepMAC":"ee:43:f0:12:f0:3f"}`)
	if _, err := k.NodeLease(node("b", []string{"10.244.7.0/24"}, an), mustConfig(t, netConf)); err != nil {
		t.Errorf("backend-data without VNI: %v", err)
	}
}

func TestNodeLeaseDualStack(t *testing.T) {
	k, _ := NewKeys(DefaultPrefix)
	cfg := mustConfig(t, netConfDual)
	mac, _ := net.ParseMAC("ee:43:f0:12:f0:3f")
	own := Own{PublicIP: netip.MustParseAddr("172.30.250.7"), PublicIPv6: netip.MustParseAddr("fd00::7"), VNI: 1, VtepMAC: mac}
	an, err := k.Annotations(cfg, own)
	if err != nil {
		t.Fatal(err)
	}
	// Round trip: what we publish, a peer reads back.
	l, err := k.NodeLease(node("c", []string{"10.244.7.0/24", "fc00:0:0:7::/64"}, an), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != netip.MustParsePrefix("10.244.7.0/24") || l.IPv6Subnet != netip.MustParsePrefix("fc00:0:0:7::/64") ||
		l.PublicIP != own.PublicIP || l.PublicIPv6 != own.PublicIPv6 || l.VtepMAC.String() != mac.String() || l.IPv6VtepMAC.String() != mac.String() {
		t.Errorf("dual-stack lease %+v", l)
	}
	// The IPv6 half missing is malformed when the config enables IPv6.
	delete(an, k.PublicIPv6)
	if _, err := k.NodeLease(node("c", []string{"10.244.7.0/24", "fc00:0:0:7::/64"}, an), cfg); err == nil || !strings.Contains(err.Error(), "public-ipv6") {
		t.Errorf("no public-ipv6: %v", err)
	}
	if _, err := k.NodeLease(node("c", []string{"10.244.7.0/24"}, an), cfg); err == nil || !strings.Contains(err.Error(), "IPv6 pod CIDR") {
		t.Errorf("no IPv6 pod CIDR: %v", err)
	}
}

func TestPodCIDRs(t *testing.T) {
	for _, tc := range []struct {
		podCIDR string
		list    []string
		v4, v6  string
		bad     bool
	}{
		{"", nil, "", "", false},
		{"10.244.1.0/24", nil, "10.244.1.0/24", "", false},
		{"10.244.1.7/24", nil, "10.244.1.0/24", "", false},
		{"10.244.1.0/24", []string{"10.244.1.0/24", "fc00::/64"}, "10.244.1.0/24", "fc00::/64", false},
		{"fc00::/64", []string{"fc00::/64"}, "", "fc00::/64", false},
		{"", []string{"10.244.1.0/24", "10.244.2.0/24"}, "", "", true},
		{"junk", nil, "", "", true},
	} {
		n := &corev1.Node{Spec: corev1.NodeSpec{PodCIDR: tc.podCIDR, PodCIDRs: tc.list}}
		v4, v6, err := PodCIDRs(n)
		if tc.bad {
			if err == nil {
				t.Errorf("PodCIDRs(%q, %v) accepted", tc.podCIDR, tc.list)
			}
			continue
		}
		if err != nil || fmtPrefix(v4) != tc.v4 || fmtPrefix(v6) != tc.v6 {
			t.Errorf("PodCIDRs(%q, %v) = %v, %v, %v; want %s %s", tc.podCIDR, tc.list, v4, v6, err, tc.v4, tc.v6)
		}
	}
}

func fmtPrefix(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}
