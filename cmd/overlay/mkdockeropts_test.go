package main

import (
	"os"
	"path/filepath"
	"testing"
)

// The seed document shows what flannel's mk-docker-opts.sh wrote on a node
// whose subnet.env said FLANNEL_SUBNET=172.30.72.1/24, FLANNEL_MTU=1450,
// FLANNEL_IPMASQ=false, run as `mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS
// -d /run/flannel/docker`.
const seedDockerEnv = `DOCKER_OPT_BIP="--bip=172.30.72.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1450"
DOCKER_NETWORK_OPTIONS=" --bip=172.30.72.1/24 --ip-masq=true --mtu=1450 "
`

func runMkDockerOpts(t *testing.T, subnetEnv string, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	in := filepath.Join(dir, "subnet.env")
	out := filepath.Join(dir, "docker")
	if err := os.WriteFile(in, []byte(subnetEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"overlay", "mk-docker-opts", "-f", in, "-d", out}, args...)
	if err := newApp().Run(argv); err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
	return string(got)
}

func TestMkDockerOptsMatchesSeed(t *testing.T) {
	t.Setenv("DOCKER_NETWORK_OPTIONS", "")
	env := "FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
	got := runMkDockerOpts(t, env, "-k", "DOCKER_NETWORK_OPTIONS")
	if got != seedDockerEnv {
		t.Errorf("got:\n%s\nwant:\n%s", got, seedDockerEnv)
	}
}

func TestMkDockerOptsVariants(t *testing.T) {
	t.Setenv("DOCKER_OPTS", "")
	env := "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.62.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n" +
		"FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:3e::1/64\n"
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"combined only", []string{"-c"},
			`DOCKER_OPTS=" --bip=10.244.62.1/24 --ip-masq=false --ipv6 --fixed-cidr-v6=fc00:0:0:3e::1/64 --mtu=1450 "` + "\n"},
		{"individual only, no masq", []string{"-i", "-m"},
			`DOCKER_OPT_BIP="--bip=10.244.62.1/24"` + "\n" +
				`DOCKER_OPT_IPV6="--ipv6 --fixed-cidr-v6=fc00:0:0:3e::1/64"` + "\n" +
				`DOCKER_OPT_MTU="--mtu=1450"` + "\n"},
		{"grouped short options", []string{"-cm"},
			`DOCKER_OPTS=" --bip=10.244.62.1/24 --ipv6 --fixed-cidr-v6=fc00:0:0:3e::1/64 --mtu=1450 "` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := runMkDockerOpts(t, env, tt.args...); got != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// The combined variable extends the value it already has in the
// environment, as the script's eval of "\$${key}" does.
func TestMkDockerOptsKeepsExistingCombinedValue(t *testing.T) {
	t.Setenv("DOCKER_OPTS", "--log-level=warn")
	got := runMkDockerOpts(t, "FLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n", "-c")
	want := `DOCKER_OPTS="--log-level=warn --bip=10.244.1.1/24 --ip-masq=true --mtu=1450 "` + "\n"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParseEnvFile(t *testing.T) {
	env, err := parseEnvFile([]byte("# comment\n\nexport A=1\nB=\"two words\"\nC='x'\n"))
	if err != nil {
		t.Fatal(err)
	}
	if env["A"] != "1" || env["B"] != "two words" || env["C"] != "x" {
		t.Errorf("parsed %v", env)
	}
	for _, bad := range []string{"NOEQUALS\n", "1X=2\n", "A B=1\n"} {
		if _, err := parseEnvFile([]byte(bad)); err == nil {
			t.Errorf("parseEnvFile(%q) accepted", bad)
		}
	}
}

func TestMkDockerOptsErrors(t *testing.T) {
	dir := t.TempDir()
	if err := newApp().Run([]string{"overlay", "mk-docker-opts", "-f", filepath.Join(dir, "missing.env"), "-d", filepath.Join(dir, "out")}); err == nil {
		t.Error("missing env file accepted")
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); !os.IsNotExist(err) {
		t.Error("output written although input was missing")
	}
}
