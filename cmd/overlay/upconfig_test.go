package main

import (
	"io"
	"log/slog"
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
