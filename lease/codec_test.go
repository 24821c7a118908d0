package lease

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// flannelValue is a lease value exactly as flannel's vxlan backend writes it.
const flannelValue = `{"PublicIP":"172.30.250.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d6"}}`

func TestEncodeValueExact(t *testing.T) {
	l := Lease{
		Subnet:      pfx("10.244.62.0/24"),
		PublicIP:    ip("172.30.250.11"),
		BackendType: "vxlan",
		VNI:         1,
		VtepMAC:     mac("3a:2e:6c:5d:b4:d6"),
	}
	b, err := encodeValue(&l)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != flannelValue {
		t.Errorf("got  %s\nwant %s", b, flannelValue)
	}
	got, err := decodeLease("10.244.62.0-24", b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(&l) {
		t.Errorf("round trip: got %+v, want %+v", got, l)
	}
}

func TestEncodeValueDual(t *testing.T) {
	l := Lease{
		Subnet: pfx("10.244.62.0/24"), IPv6Subnet: pfx("fc00:0:0:3e::/64"),
		PublicIP: ip("172.30.250.11"), PublicIPv6: ip("fd00::11"),
		BackendType: "vxlan", VNI: 1, VtepMAC: mac("3a:2e:6c:5d:b4:d6"), IPv6VtepMAC: mac("3a:2e:6c:5d:b4:d6"),
	}
	b, err := encodeValue(&l)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"PublicIP":"172.30.250.11","PublicIPv6":"fd00::11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d6"},"BackendV6Data":{"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d6"}}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
	got, err := decodeLease("10.244.62.0-24&fc00:0:0:3e::-64", b)
	if err != nil || !got.Equal(&l) {
		t.Errorf("round trip: %+v, %v", got, err)
	}
}

func TestDecodeLease(t *testing.T) {
	tests := []struct {
		key, value string
		want       Lease
		bad        bool
	}{
		{key: "10.244.62.0-24", value: flannelValue, want: Lease{Subnet: pfx("10.244.62.0/24"),
			PublicIP: ip("172.30.250.11"), BackendType: "vxlan", VNI: 1, VtepMAC: mac("3a:2e:6c:5d:b4:d6")}},
		// The seed's older flannel: no PublicIPv6, no VNI.
		{key: "172.22.9.0-24", value: `{"PublicIP":"192.168.166.102","BackendType":"vxlan","BackendData":{"VtepMAC":"1a:9a:e1:c1:be:3f"}}`,
			want: Lease{Subnet: pfx("172.22.9.0/24"), PublicIP: ip("192.168.166.102"), BackendType: "vxlan", VtepMAC: mac("1a:9a:e1:c1:be:3f")}},
		// Another backend: decoded, data ignored.
		{key: "10.244.3.0-24", value: `{"PublicIP":"10.0.0.3","BackendType":"host-gw"}`,
			want: Lease{Subnet: pfx("10.244.3.0/24"), PublicIP: ip("10.0.0.3"), BackendType: "host-gw"}},
		{key: "10.244.3.0-24", value: `{"PublicIP":"10.0.0.3","BackendType":"udp","BackendData":"garbage"}`,
			want: Lease{Subnet: pfx("10.244.3.0/24"), PublicIP: ip("10.0.0.3"), BackendType: "udp"}},
		// IPv6 only.
		{key: "0.0.0.0-0&fc00::-64", value: `{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}`,
			want: Lease{IPv6Subnet: pfx("fc00::/64"), PublicIPv6: ip("fd00::1"), BackendType: "vxlan", IPv6VtepMAC: mac("02:00:00:00:00:01")}},
		// A reservation: decoded, but not a usable peer (peerProblem).
		{key: "10.244.62.0-24", value: `{"PublicIP":"172.30.250.11","BackendType":"vxlan","BackendData":{"VNI":1}}`,
			want: Lease{Subnet: pfx("10.244.62.0/24"), PublicIP: ip("172.30.250.11"), BackendType: "vxlan", VNI: 1}},
		{key: "10.244.62.0-24", value: `{"PublicIP":"172.30.250.11","BackendType":"vxlan","BackendData":{"VtepMAC":"zz"}}`, bad: true},
		{key: "10.244.62.0-24", value: `{"PublicIP":"172.30.250.11","BackendType":"vxlan","BackendData":{"VtepMAC":"00:00:00:00:00:00:00:01"}}`, bad: true},
		{key: "10.244.62.0-24", value: `{"PublicIP":"fd00::1","BackendType":"vxlan","BackendData":{"VtepMAC":"02:00:00:00:00:01"}}`, bad: true},
		{key: "10.244.62.0-24", value: `{"BackendType":"vxlan","BackendData":{"VtepMAC":"02:00:00:00:00:01"}}`, bad: true},
		{key: "10.244.62.0-24", value: `not json`, bad: true},
		{key: "10.244.62.1-24", value: flannelValue, bad: true},
	}
	for _, tt := range tests {
		got, err := decodeLease(tt.key, []byte(tt.value))
		if tt.bad {
			if err == nil {
				t.Errorf("%s %s: decoded as %+v, want an error", tt.key, tt.value, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %s: %v", tt.key, tt.value, err)
			continue
		}
		if !got.Equal(&tt.want) {
			t.Errorf("%s %s:\n got  %+v\n want %+v", tt.key, tt.value, got, tt.want)
		}
	}
}

func TestParseSubnetKey(t *testing.T) {
	good := map[string][2]string{
		"10.244.62.0-24":                  {"10.244.62.0/24", ""},
		"172.22.9.0-24":                   {"172.22.9.0/24", ""},
		"10.244.0.4-30":                   {"10.244.0.4/30", ""},
		"10.244.62.0-24&fc00::-64":        {"10.244.62.0/24", "fc00::/64"},
		"10.244.62.0-24&fc00:0:0:3e::-64": {"10.244.62.0/24", "fc00:0:0:3e::/64"},
		"0.0.0.0-0&fc00::-64":             {"", "fc00::/64"},
	}
	for k, want := range good {
		sn, sn6, err := ParseSubnetKey(k)
		if err != nil {
			t.Errorf("%s: %v", k, err)
			continue
		}
		if w := want[0]; (w == "" && sn.IsValid()) || (w != "" && sn != pfx(w)) {
			t.Errorf("%s: IPv4 %v, want %s", k, sn, w)
		}
		if w := want[1]; (w == "" && sn6.IsValid()) || (w != "" && sn6 != pfx(w)) {
			t.Errorf("%s: IPv6 %v, want %s", k, sn6, w)
		}
		if back := SubnetKey(sn, sn6); back != k {
			t.Errorf("SubnetKey(%v, %v) = %s, want %s", sn, sn6, back, k)
		}
	}
	for _, k := range []string{
		"", "-", "10.244.62.0", "10.244.62.0-", "10.244.62.0-33", "10.244.62.1-24", "10.244.62.0-024",
		"10.244.62.0-+4", "010.244.62.0-24", "10.244.62.0-24&", "10.244.62.0-24&fc00::1-64",
		"10.244.62.0-24&FC00::-64", "fc00::-64", "10.244.62.0-24&10.0.0.0-8", "0.0.0.0-0",
		"1.2.3.0-0&fc00::-64", "10.244.62.0-24&fc00::-64&fc01::-64", "10.244.62.0_24", "::ffff:10.244.62.0-120",
	} {
		if sn, sn6, err := ParseSubnetKey(k); err == nil {
			t.Errorf("ParseSubnetKey(%q) = %v, %v; want an error", k, sn, sn6)
		}
	}
}

// slowParseSubnetKey is a reference parser written differently: split by
// the separators flannel's regexp uses and compare against re-formatting.
func slowParseSubnetKey(k string) (netip.Prefix, netip.Prefix, bool) {
	parts := strings.Split(k, "&")
	if len(parts) > 2 {
		return netip.Prefix{}, netip.Prefix{}, false
	}
	var out [2]netip.Prefix
	for i, p := range parts {
		j := strings.LastIndex(p, "-")
		if j < 0 {
			return netip.Prefix{}, netip.Prefix{}, false
		}
		n, err := strconv.Atoi(p[j+1:])
		if err != nil || strconv.Itoa(n) != p[j+1:] {
			return netip.Prefix{}, netip.Prefix{}, false
		}
		pp, err := netip.ParsePrefix(p[:j] + "/" + p[j+1:])
		if err != nil || pp.Masked() != pp || pp.Addr().String() != p[:j] || pp.Addr().Is4() != (i == 0) {
			return netip.Prefix{}, netip.Prefix{}, false
		}
		out[i] = pp
	}
	if out[0].Bits() == 0 {
		if len(parts) != 2 || out[0].Addr() != netip.IPv4Unspecified() {
			return netip.Prefix{}, netip.Prefix{}, false
		}
		out[0] = netip.Prefix{}
	}
	return out[0], out[1], true
}

func FuzzParseSubnetKey(f *testing.F) {
	for _, s := range []string{"10.244.62.0-24", "10.244.62.0-24&fc00::-64", "0.0.0.0-0&fc00::-64", "1.2.3.4-32", "10.0.0.0-8", "bad"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, k string) {
		sn, sn6, err := ParseSubnetKey(k)
		rsn, rsn6, ok := slowParseSubnetKey(k)
		if (err == nil) != ok {
			t.Fatalf("%q: fast err %v, slow ok %v", k, err, ok)
		}
		if err != nil {
			return
		}
		if sn != rsn || sn6 != rsn6 {
			t.Fatalf("%q: fast %v %v, slow %v %v", k, sn, sn6, rsn, rsn6)
		}
		if back := SubnetKey(sn, sn6); back != k {
			t.Fatalf("%q: re-formatted as %q", k, back)
		}
	})
}

func FuzzDecodeLease(f *testing.F) {
	f.Add("10.244.62.0-24", flannelValue)
	f.Add("10.244.62.0-24&fc00::-64", `{"PublicIP":"1.2.3.4","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}}`)
	f.Fuzz(func(t *testing.T, k, v string) {
		l, err := decodeLease(k, []byte(v))
		if err != nil || l.BackendType != BackendVXLAN {
			return
		}
		b, err := encodeValue(&l)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeLease(k, b)
		if err != nil {
			t.Fatalf("re-decode %s: %v", b, err)
		}
		if !again.Equal(&l) {
			t.Fatalf("round trip %s:\n %+v\n %+v", b, l, again)
		}
	})
}

func BenchmarkParseSubnetKey(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ParseSubnetKey("10.244.62.0-24&fc00:0:0:3e::-64"); err != nil {
			b.Fatal(err)
		}
	}
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}
