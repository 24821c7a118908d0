package cluster

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestEncodeLeaseValueIsFlannelJSON(t *testing.T) {
	mac, _ := net.ParseMAC("3a:2e:6c:5d:b4:d6")
	got, err := EncodeLeaseValue(netip.MustParseAddr("172.30.250.11"), 1, mac)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"PublicIP":"172.30.250.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d6"}}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	l, err := ParseLease("/coreos.com/network/subnets/10.244.62.0-24", got)
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != netip.MustParsePrefix("10.244.62.0/24") || l.PublicIP != netip.MustParseAddr("172.30.250.11") ||
		l.VNI != 1 || l.VtepMAC.String() != mac.String() || l.BackendType != "vxlan" {
		t.Errorf("round trip: %+v", l)
	}
}

func TestParseLease(t *testing.T) {
	for _, tc := range []struct {
		key, value string
		subnet     string
		wantErr    bool
	}{
		// flannel versions before VNI in BackendData, as in the seed docs.
		{"/kube-centos/network/subnets/172.30.19.0-24", `{"PublicIP":"10.64.3.7","BackendType":"vxlan","BackendData":{"VtepMAC":"d6:51:2e:80:5c:69"}}`, "172.30.19.0/24", false},
		{"/coreos.com/network/subnets/10.244.1.0-24&fc00::-64", `{"PublicIP":"172.30.250.11","PublicIPv6":"fc00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d6"}}`, "10.244.1.0/24", false},
		{"/coreos.com/network/subnets/10.244.2.0-24", `{"PublicIP":"172.30.250.12","BackendType":"udp"}`, "10.244.2.0/24", false},
		{"/coreos.com/network/subnets/10.244.3.0-24", `{"PublicIP":"172.30.250.13",`, "", true},
		{"/coreos.com/network/subnets/10.244.3.0-24", `{"PublicIP":"nope","BackendType":"vxlan"}`, "", true},
		{"/coreos.com/network/subnets/10.244.3.0-24", `{"PublicIP":"172.30.250.13","BackendType":"vxlan","BackendData":{"VtepMAC":"zz"}}`, "", true},
		{"/coreos.com/network/subnets/garbage", `{}`, "", true},
		{"/coreos.com/network/config", `{}`, "", true},
	} {
		l, err := ParseLease(tc.key, []byte(tc.value))
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseLease(%s, %s): err %v, want error %v", tc.key, tc.value, err, tc.wantErr)
			continue
		}
		if err == nil && l.Subnet.String() != tc.subnet {
			t.Errorf("ParseLease(%s): subnet %v, want %s", tc.key, l.Subnet, tc.subnet)
		}
	}
}

func TestSubnetKey(t *testing.T) {
	if got := SubnetKey("/coreos.com/network/", netip.MustParsePrefix("10.244.62.0/24")); got != "/coreos.com/network/subnets/10.244.62.0-24" {
		t.Errorf("SubnetKey = %s", got)
	}
}

func TestParsePing(t *testing.T) {
	const ok = `PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.
64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.412 ms
64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=0.250 ms
64 bytes from 10.244.2.2: icmp_seq=3 ttl=62 time=0.301 ms

--- 10.244.2.2 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 402ms
rtt min/avg/max/mdev = 0.250/0.321/0.412/0.067 ms
`
	r, err := ParsePing(ok)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || r.Transmitted != 3 || r.RTTAvg != 321*time.Microsecond || r.RTTMax != 412*time.Microsecond || r.FragNeeded {
		t.Errorf("ok: %+v", r)
	}

	const local = `PING 10.244.2.2 (10.244.2.2) 1423(1451) bytes of data.
ping: local error: message too long, mtu=1450
ping: local error: message too long, mtu=1450

--- 10.244.2.2 ping statistics ---
2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 1001ms
`
	r, err = ParsePing(local)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() || !r.FragNeeded || r.MTU != 1450 || r.Received != 0 {
		t.Errorf("local error: %+v", r)
	}

	const remote = `PING 10.244.2.2 (10.244.2.2) 1472(1500) bytes of data.
From 10.244.1.1 icmp_seq=1 Frag needed and DF set (mtu = 1450)

--- 10.244.2.2 ping statistics ---
1 packets transmitted, 0 received, +1 errors, 100% packet loss, time 0ms
`
	r, err = ParsePing(remote)
	if err != nil {
		t.Fatal(err)
	}
	if !r.FragNeeded || r.MTU != 1450 {
		t.Errorf("frag needed: %+v", r)
	}

	const busybox = `PING 10.244.2.2 (10.244.2.2): 56 data bytes
64 bytes from 10.244.2.2: seq=0 ttl=62 time=0.312 ms

--- 10.244.2.2 ping statistics ---
1 packets transmitted, 1 packets received, 0% packet loss
round-trip min/avg/max = 0.312/0.312/0.312 ms
`
	if r, err := ParsePing(busybox); err != nil || !r.OK() || r.RTTAvg != 312*time.Microsecond {
		t.Errorf("busybox: %+v %v", r, err)
	}
	if _, err := ParsePing("ping: connect: Network is unreachable\n"); err == nil {
		t.Error("no summary: want error")
	}
}

func TestParseMetrics(t *testing.T) {
	const text = `# HELP overlay_drops_total Dropped packets.
# TYPE overlay_drops_total counter
overlay_drops_total{reason="bad_vni"} 3
overlay_drops_total{reason="short"} 2
overlay_drops_total{reason="bad label, with space"} 1 1700000000000
overlay_peers 2
go_gc_duration_seconds{quantile="0.5"} 1.5e-05
`
	m, err := ParseMetrics([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Sum("overlay_drops_total"); got != 6 {
		t.Errorf("sum of drops = %v, want 6", got)
	}
	if got := m.Sum("overlay_drops_total", `reason="bad_vni"`); got != 3 {
		t.Errorf("bad_vni drops = %v, want 3", got)
	}
	if got := m["overlay_peers"]; got != 2 {
		t.Errorf("overlay_peers = %v", got)
	}
	if _, err := ParseMetrics([]byte("novalue\n")); err == nil {
		t.Error("line without value: want error")
	}
}

func TestConfigSubnets(t *testing.T) {
	subs, err := configSubnets([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 255 || subs[0] != netip.MustParsePrefix("10.244.1.0/24") || subs[254] != netip.MustParsePrefix("10.244.255.0/24") {
		t.Errorf("got %d subnets, %v .. %v", len(subs), subs[0], subs[len(subs)-1])
	}
	subs, err = configSubnets([]byte(`{"network":"10.10.0.0/24"}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 3 || subs[0].Bits() != 26 {
		t.Errorf("small network: %v", subs)
	}
	for _, bad := range []string{`{"Network":"nope"}`, `{"Network":"10.0.0.0/16","SubnetLen":8}`, `{`} {
		if _, err := configSubnets([]byte(bad)); err == nil {
			t.Errorf("configSubnets(%s): want error", bad)
		}
	}
}
