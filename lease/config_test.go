package lease

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseConfigDefaults(t *testing.T) {
	tests := []struct {
		name string
		json string
		want Config
	}{
		{
			name: "seed /16",
			json: `{"Network": "172.22.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}`,
			want: Config{EnableIPv4: true, Network: pfx("172.22.0.0/16"), SubnetLen: 24,
				SubnetMin: ip("172.22.1.0"), SubnetMax: ip("172.22.255.0"), Backend: Backend{"vxlan", 1, 8472}},
		},
		{
			name: "lower case keys, SubnetLen defaulted",
			json: `{"network": "10.244.0.0/16", "backend": {"type": "vxlan", "vni": 4096, "port": 4789}}`,
			want: Config{EnableIPv4: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
				SubnetMin: ip("10.244.1.0"), SubnetMax: ip("10.244.255.0"), Backend: Backend{"vxlan", 4096, 4789}},
		},
		{
			name: "/22 gives /24",
			json: `{"Network": "10.244.0.0/22", "Backend": {"Type": "vxlan", "VNI": 0, "Port": 0}}`,
			want: Config{EnableIPv4: true, Network: pfx("10.244.0.0/22"), SubnetLen: 24,
				SubnetMin: ip("10.244.1.0"), SubnetMax: ip("10.244.3.0"), Backend: Backend{"vxlan", 1, 8472}},
		},
		{
			name: "/23 gives /25",
			json: `{"Network": "10.244.0.0/23", "Backend": {"Type": "vxlan"}}`,
			want: Config{EnableIPv4: true, Network: pfx("10.244.0.0/23"), SubnetLen: 25,
				SubnetMin: ip("10.244.0.128"), SubnetMax: ip("10.244.1.128"), Backend: Backend{"vxlan", 1, 8472}},
		},
		{
			name: "/28 gives /30, host bits dropped as net.ParseCIDR does",
			json: `{"Network": "10.244.0.5/28", "Backend": {"Type": "vxlan"}}`,
			want: Config{EnableIPv4: true, Network: pfx("10.244.0.0/28"), SubnetLen: 30,
				SubnetMin: ip("10.244.0.4"), SubnetMax: ip("10.244.0.12"), Backend: Backend{"vxlan", 1, 8472}},
		},
		{
			name: "explicit bounds",
			json: `{"Network": "10.244.0.0/16", "SubnetMin": "10.244.10.0", "SubnetMax": "10.244.20.0", "Backend": {"Type": "vxlan"}}`,
			want: Config{EnableIPv4: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
				SubnetMin: ip("10.244.10.0"), SubnetMax: ip("10.244.20.0"), Backend: Backend{"vxlan", 1, 8472}},
		},
		{
			name: "dual stack",
			json: `{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48", "Backend": {"Type": "vxlan"}}`,
			want: Config{EnableIPv4: true, Network: pfx("10.244.0.0/16"), SubnetLen: 24,
				SubnetMin: ip("10.244.1.0"), SubnetMax: ip("10.244.255.0"),
				EnableIPv6: true, IPv6Network: pfx("fc00::/48"), IPv6SubnetLen: 64,
				IPv6SubnetMin: ip("fc00:0:0:1::"), IPv6SubnetMax: ip("fc00:0:0:ffff::"), Backend: Backend{"vxlan", 1, 8472}},
		},
		{
			name: "IPv6 only, /120 gives /122",
			json: `{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fc00::/120", "Backend": {"Type": "vxlan"}}`,
			want: Config{EnableIPv6: true, IPv6Network: pfx("fc00::/120"), IPv6SubnetLen: 122,
				IPv6SubnetMin: ip("fc00::40"), IPv6SubnetMax: ip("fc00::c0"), Backend: Backend{"vxlan", 1, 8472}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConfig([]byte(tt.json))
			if err != nil {
				t.Fatal(err)
			}
			if *got != tt.want {
				t.Errorf("got  %+v\nwant %+v", *got, tt.want)
			}
			// Round trip through MarshalJSON.
			b, err := got.MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			again, err := ParseConfig(b)
			if err != nil {
				t.Fatalf("reparse %s: %v", b, err)
			}
			if *again != *got {
				t.Errorf("round trip %s\n got  %+v\n want %+v", b, *again, *got)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		json  string
		field string // ConfigError.Field
		in    []string
	}{
		{`{"Backend": {"Type": "vxlan"}}`, "Network", []string{"missing"}},
		{`{"Network": "10.244.0.0/33", "Backend": {"Type": "vxlan"}}`, "Network", []string{`"10.244.0.0/33"`}},
		{`{"Network": "fc00::/48", "Backend": {"Type": "vxlan"}}`, "Network", []string{"IPv4"}},
		{`{"Network": "10.244.0.0/29", "Backend": {"Type": "vxlan"}}`, "Network", []string{"10.244.0.0/29", "/28"}},
		{`{"Network": "10.244.0.0/16", "SubnetLen": 31, "Backend": {"Type": "vxlan"}}`, "SubnetLen", []string{"31", "/30"}},
		{`{"Network": "10.244.0.0/16", "SubnetLen": 17, "Backend": {"Type": "vxlan"}}`, "SubnetLen", []string{"17", "four subnets"}},
		{`{"Network": "10.244.0.0/16", "SubnetLen": -1, "Backend": {"Type": "vxlan"}}`, "SubnetLen", []string{"-1"}},
		{`{"Network": "10.244.0.0/16", "SubnetLen": 24.5, "Backend": {"Type": "vxlan"}}`, "SubnetLen", []string{"24.5"}},
		{`{"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0", "Backend": {"Type": "vxlan"}}`, "SubnetMin", []string{"10.245.0.0", "outside"}},
		{`{"Network": "172.22.0.0/16", "SubnetMax": "172.22.255.254", "Backend": {"Type": "vxlan"}}`, "SubnetMax", []string{"172.22.255.254", "boundary", "172.22.255.0"}},
		{`{"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.8.0", "Backend": {"Type": "vxlan"}}`, "SubnetMax", []string{"10.244.8.0", "below"}},
		{`{"Network": "10.244.0.0/16", "SubnetMin": "bogus", "Backend": {"Type": "vxlan"}}`, "SubnetMin", []string{`"bogus"`}},
		{`{"Network": "10.244.0.0/16"}`, "Backend.Type", []string{"udp", "VXLAN"}},
		{`{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}`, "Backend.Type", []string{`"host-gw"`, "VXLAN", "userspace"}},
		{`{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 16777216}}`, "Backend.VNI", []string{"16777216"}},
		{`{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Port": 70000}}`, "Backend.Port", []string{"70000"}},
		{`{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "GBP": true}}`, "Backend.GBP", []string{"true"}},
		{`{"EnableIPv4": false, "Backend": {"Type": "vxlan"}}`, "EnableIPv4", []string{"false"}},
		{`{"Network": "10.244.0.0/16", "EnableIPv6": true, "Backend": {"Type": "vxlan"}}`, "IPv6Network", []string{"missing"}},
		{`{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48", "IPv6SubnetLen": 127, "Backend": {"Type": "vxlan"}}`, "IPv6SubnetLen", []string{"127"}},
		{`{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:1::", "Backend": {"Type": "vxlan"}}`, "IPv6SubnetMin", []string{"fc00:1::"}},
	}
	for _, tt := range tests {
		_, err := ParseConfig([]byte(tt.json))
		var ce *ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("%s: error %v is not a *ConfigError", tt.json, err)
			continue
		}
		if ce.Field != tt.field {
			t.Errorf("%s: field %q, want %q (%v)", tt.json, ce.Field, tt.field, err)
		}
		for _, s := range tt.in {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: error %q does not mention %q", tt.json, err, s)
			}
		}
	}
	for _, bad := range []string{``, `[]`, `{"Network": 5}`, `{} {}`} {
		if _, err := ParseConfig([]byte(bad)); err == nil {
			t.Errorf("ParseConfig(%q) succeeded", bad)
		}
	}
}

func TestConfigContains(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"Network": "10.244.0.0/16", "SubnetMax": "10.244.100.0", "Backend": {"Type": "vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{
		"10.244.0.0/24": false, "10.244.1.0/24": true, "10.244.100.0/24": true, "10.244.101.0/24": false,
		"10.244.1.0/25": false, "10.245.1.0/24": false, "fc00::/64": false,
	} {
		if got := cfg.Contains(pfx(p)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", p, got, want)
		}
	}
	if cfg.ContainsIPv6(pfx("fc00::/64")) {
		t.Error("ContainsIPv6 with IPv6 disabled")
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }
