package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"overlay/tunnel"
)

// parseArgs runs parseUp over `overlay up` arguments, as the up command
// would, without starting anything.
func parseArgs(t *testing.T, args ...string) (*upConfig, error) {
	t.Helper()
	var cfg *upConfig
	var perr error
	app := &cli.App{
		Name: "overlay", Flags: upFlags(), Writer: io.Discard, ErrWriter: io.Discard,
		Action: func(c *cli.Context) error {
			cfg, perr = parseUp(c, slog.New(slog.DiscardHandler))
			return nil
		},
	}
	if err := app.Run(append([]string{"overlay"}, args...)); err != nil {
		return nil, err
	}
	return cfg, perr
}

func TestParseUpDefaultsAndEnv(t *testing.T) {
	cfg, err := parseArgs(t, "--iface=lo", "--public-ip=172.30.250.11")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.under.iface.Name != "lo" || cfg.under.publicIP.String() != "172.30.250.11" {
		t.Errorf("underlay = %+v", cfg.under)
	}
	if cfg.prefix != "/coreos.com/network" || cfg.subnetFile != "/run/flannel/subnet.env" ||
		strings.Join(cfg.etcd.Endpoints, ",") != "http://127.0.0.1:2379" || cfg.renewMargin.Minutes() != 60 {
		t.Errorf("defaults: %+v", cfg)
	}
	// The MTU follows the underlay: loopback's 65536 leaves the UDP maximum.
	if cfg.mtu != maxMTU {
		t.Errorf("mtu = %d, want %d", cfg.mtu, maxMTU)
	}
	if cfg.healthzAddr != "127.0.0.1:8471" {
		t.Errorf("healthz = %q", cfg.healthzAddr)
	}
	if cfg.sourceCheck != tunnel.SourceCheckStrict {
		t.Errorf("source check = %v, want strict by default", cfg.sourceCheck)
	}

	// flanneld's environment variables and ours; ours win.
	t.Setenv("FLANNELD_ETCD_ENDPOINTS", "http://172.30.250.1:2379")
	t.Setenv("FLANNELD_ETCD_PREFIX", "/kube-centos/network")
	t.Setenv("FLANNELD_IFACE", "lo")
	t.Setenv("FLANNELD_PUBLIC_IP", "172.30.250.12")
	t.Setenv("OVERLAY_PUBLIC_IP", "172.30.250.13")
	t.Setenv("OVERLAY_MTU", "1400")
	t.Setenv("FLANNELD_HEALTHZ_PORT", "0")
	t.Setenv("FLANNELD_SOURCE_CHECK", "nat")
	cfg, err = parseArgs(t)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.etcd.Endpoints[0] != "http://172.30.250.1:2379" || cfg.prefix != "/kube-centos/network" ||
		cfg.under.publicIP.String() != "172.30.250.13" || cfg.mtu != 1400 || cfg.healthzAddr != "" ||
		cfg.sourceCheck != tunnel.SourceCheckNAT {
		t.Errorf("from environment: %+v", cfg)
	}
	// flanneld's single-dash flags, as the seed unit files write them.
	cfg, err = parseArgs(t, "-etcd-endpoints=http://172.30.250.2:2379", "-etcd-prefix=/test/network", "-iface=lo", "-source-check=off")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.etcd.Endpoints[0] != "http://172.30.250.2:2379" || cfg.prefix != "/test/network" || cfg.sourceCheck != tunnel.SourceCheckOff {
		t.Errorf("single-dash flags: %+v", cfg)
	}
}

func TestParseUpRejects(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string // substrings of the error
	}{
		{"kernel vxlan backend", []string{"--backend=vxlan"}, nil, []string{`"vxlan" is a flanneld backend`, "userspace"}},
		{"unknown backend", []string{"--backend=fast"}, nil, []string{`"fast"`, "unknown backend"}},
		{"backend from flanneld env", nil, map[string]string{"FLANNELD_BACKEND": "host-gw"}, []string{"host-gw"}},
		{"missing interface", []string{"--iface=nosuch0"}, nil, []string{"nosuch0", "no such interface"}},
		{"interface by address not here", []string{"--iface=172.30.250.99"}, nil, []string{"172.30.250.99"}},
		{"bad regex", []string{"--iface=nosuch0", "--iface-regex=("}, nil, []string{"--iface-regex"}},
		{"bad public ip", []string{"--iface=lo", "--public-ip=300.1.1.1"}, nil, []string{"--public-ip", "300.1.1.1"}},
		{"mtu too small", []string{"--mtu=500"}, nil, []string{"--mtu 500"}},
		{"mtu too large", []string{"--mtu=70000"}, nil, []string{"--mtu 70000"}},
		{"port", []string{"--port=70000"}, nil, []string{"--port 70000"}},
		{"unreadable CA", []string{"--etcd-cafile=/nonexistent/ca.pem"}, nil, []string{"/nonexistent/ca.pem"}},
		{"cert without key", []string{"--etcd-certfile=/etc/hostname"}, nil, []string{"without a key"}},
		{"prefix ending in config", []string{"--etcd-prefix=/test/network/config"}, nil, []string{"ends in /config"}},
		{"long tun name", []string{"--tun-name=averyveryverylongname"}, nil, []string{"--tun-name"}},
		{"tun fd is stdio", []string{"--tun-fd=1"}, nil, []string{"--tun-fd 1"}},
		{"renew margin", []string{"--subnet-lease-renew-margin=0"}, nil, []string{"--subnet-lease-renew-margin 0"}},
		{"renew margin past ttl", []string{"--subnet-lease-renew-margin=1440"}, nil, []string{"1440"}},
		{"driver", []string{"--tun-driver=turbo"}, nil, []string{"turbo"}},
		{"source check", []string{"--source-check=loose"}, nil, []string{"--source-check", `"loose"`, "strict, nat or off"}},
		{"naive offload", []string{"--naive", "--tun-driver=offload"}, nil, []string{"--naive"}},
		{"healthz ip", []string{"--healthz-ip=localhost"}, nil, []string{"--healthz-ip"}},
		{"arguments", []string{"extra"}, nil, []string{"no arguments"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := append([]string{"--public-ip=172.30.250.11"}, tt.args...)
			if !strings.Contains(strings.Join(tt.args, " "), "--iface") {
				args = append(args, "--iface=lo")
			}
			_, err := parseArgs(t, args...)
			if err == nil {
				t.Fatalf("accepted %v", tt.args)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestLoggerFlags(t *testing.T) {
	if _, err := newLogger(io.Discard, "loud", "text"); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("bad level: %v", err)
	}
	if _, err := newLogger(io.Discard, "info", "xml"); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("bad format: %v", err)
	}
	if _, err := newLogger(io.Discard, "debug", "json"); err != nil {
		t.Error(err)
	}
}

// TestParseUpKube checks the --kube-subnet-mgr flags: everything is
// checked before anything is contacted or touched.
func TestParseUpKube(t *testing.T) {
	dir := t.TempDir()
	netConf := filepath.Join(dir, "net-conf.json")
	if err := os.WriteFile(netConf, []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	badConf := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(badConf, []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	unsetenv(t, "KUBERNETES_SERVICE_HOST")
	t.Setenv("NODE_NAME", "node-a")
	base := []string{"--iface=lo", "--public-ip=172.30.250.11", "--kube-subnet-mgr", "--kube-api-url=http://127.0.0.1:6443", "--net-config-path=" + netConf}
	cfg, err := parseArgs(t, base...)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.kube == nil || cfg.kube.rest.Host != "http://127.0.0.1:6443" || cfg.kube.netConf.Network.String() != "10.244.0.0/16" ||
		cfg.kube.prefix != "flannel.alpha.coreos.com" || !cfg.kube.setNU {
		t.Errorf("kube config: %+v", cfg.kube)
	}
	// flanneld's environment variables.
	t.Setenv("FLANNELD_KUBE_ANNOTATION_PREFIX", "example.com/net")
	t.Setenv("FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", "false")
	if cfg, err = parseArgs(t, base...); err != nil || cfg.kube.prefix != "example.com/net" || cfg.kube.setNU {
		t.Errorf("from environment: %+v, %v", cfg, err)
	}
	unsetenv(t, "FLANNELD_KUBE_ANNOTATION_PREFIX")
	unsetenv(t, "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE")

	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{append(base, "--etcd-endpoints=http://127.0.0.1:2379"), nil, "--etcd-endpoints is an etcd flag"},
		{append(base, "--etcd-prefix=/x"), nil, "--etcd-prefix is an etcd flag"},
		{append(base, "--subnet-lease-renew-margin=5"), nil, "--subnet-lease-renew-margin is an etcd flag"},
		{[]string{"--iface=lo", "--kubeconfig-file=/x"}, nil, "--kubeconfig-file needs --kube-subnet-mgr"},
		{[]string{"--iface=lo", "--net-config-path=/x"}, nil, "--net-config-path needs --kube-subnet-mgr"},
		{append(base, "--kube-annotation-prefix=a/b/c"), nil, "--kube-annotation-prefix"},
		{base, map[string]string{"NODE_NAME": ""}, "NODE_NAME"},
		{[]string{"--iface=lo", "--kube-subnet-mgr", "--net-config-path=" + netConf}, nil, "no API server"},
		{[]string{"--iface=lo", "--kube-subnet-mgr", "--kube-api-url=127.0.0.1", "--net-config-path=" + netConf}, nil, "--kube-api-url"},
		{[]string{"--iface=lo", "--kube-subnet-mgr", "--kube-api-url=http://127.0.0.1:6443"}, nil, "/etc/kube-flannel/net-conf.json"},
		{[]string{"--iface=lo", "--kube-subnet-mgr", "--kube-api-url=http://127.0.0.1:6443", "--net-config-path=" + badConf}, nil, "Backend.Type"},
	} {
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		_, err := parseArgs(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
		}
		t.Setenv("NODE_NAME", "node-a")
	}
	// POD_NAME and POD_NAMESPACE stand in for NODE_NAME.
	unsetenv(t, "NODE_NAME")
	t.Setenv("POD_NAME", "overlay-x")
	t.Setenv("POD_NAMESPACE", "kube-system")
	if _, err := parseArgs(t, base...); err != nil {
		t.Errorf("POD_NAME and POD_NAMESPACE: %v", err)
	}
}

// unsetenv removes k from the environment until the test ends.
func unsetenv(t *testing.T, k string) {
	t.Helper()
	t.Setenv(k, "") // restores the old value at the end
	os.Unsetenv(k)
}
