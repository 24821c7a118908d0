package lease

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestSubnetEnvFlannelFormat(t *testing.T) {
	for _, tt := range []struct {
		file string
		want SubnetEnv
	}{
		{"testdata/subnet.env.flannel", SubnetEnv{Network: pfx("172.22.0.0/16"), Subnet: pfx("172.22.9.1/24"), MTU: 1450}},
		{"testdata/subnet.env.flannel-dual", SubnetEnv{Network: pfx("10.244.0.0/16"), Subnet: pfx("10.244.62.1/24"),
			IPv6Network: pfx("fc00::/48"), IPv6Subnet: pfx("fc00:0:0:3e::1/64"), MTU: 1450, IPMasq: true}},
	} {
		golden, err := os.ReadFile(tt.file)
		if err != nil {
			t.Fatal(err)
		}
		// flannel's file -> us.
		got, err := ReadSubnetEnv(tt.file)
		if err != nil {
			t.Fatal(err)
		}
		if got != tt.want {
			t.Errorf("%s: read %+v, want %+v", tt.file, got, tt.want)
		}
		// us -> flannel's file, byte for byte, atomically and 0644.
		path := filepath.Join(t.TempDir(), "run", "flannel", "subnet.env")
		if err := WriteSubnetEnv(path, tt.want); err != nil {
			t.Fatal(err)
		}
		written, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(written) != string(golden) {
			t.Errorf("%s: wrote\n%s\nwant\n%s", tt.file, written, golden)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o644 {
			t.Errorf("mode %v, want 0644", fi.Mode().Perm())
		}
		entries, _ := os.ReadDir(filepath.Dir(path))
		if len(entries) != 1 {
			t.Errorf("temporary files left behind: %v", entries)
		}
	}
}

func TestNewSubnetEnv(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48", "Backend": {"Type": "vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	l := Lease{Subnet: pfx("10.244.62.0/24"), IPv6Subnet: pfx("fc00:0:0:3e::/64")}
	env := NewSubnetEnv(cfg, &l, 1450, true)
	want := SubnetEnv{Network: pfx("10.244.0.0/16"), Subnet: pfx("10.244.62.1/24"),
		IPv6Network: pfx("fc00::/48"), IPv6Subnet: pfx("fc00:0:0:3e::1/64"), MTU: 1450, IPMasq: true}
	if env != want {
		t.Errorf("got %+v, want %+v", env, want)
	}
	if env.Subnet.Masked() != l.Subnet {
		t.Errorf("Subnet.Masked() = %v", env.Subnet.Masked())
	}
}

func TestReadSubnetEnvTolerantAndStrict(t *testing.T) {
	env, err := ParseSubnetEnv([]byte("# written by hand\n\nexport FLANNEL_NETWORK=\"10.244.0.0/16\"\nFLANNEL_SUBNET='10.244.62.1/24'\nOTHER=x\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if env.Subnet != pfx("10.244.62.1/24") || env.Network != pfx("10.244.0.0/16") || !env.IPMasq || env.MTU != 1450 {
		t.Errorf("got %+v", env)
	}
	for _, bad := range []string{"FLANNEL_SUBNET=10.244.62.1", "FLANNEL_SUBNET=fc00::1/64", "FLANNEL_MTU=abc", "FLANNEL_MTU=10",
		"FLANNEL_IPMASQ=maybe", "FLANNEL_IPV6_SUBNET=10.0.0.1/24", "just a line"} {
		if _, err := ParseSubnetEnv([]byte(bad + "\n")); err == nil {
			t.Errorf("ParseSubnetEnv(%q) succeeded", bad)
		}
	}
	if _, err := ReadSubnetEnv(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
}
