package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"k8s.io/client-go/rest"

	"overlay/encap"
	"overlay/lease"
	"overlay/lease/kube"
	"overlay/tunnel"
)

// Limits checked before anything on the node is touched.
const (
	// minMTU is the least overlay MTU we run with: IPv4 hosts must accept
	// 576-byte datagrams (RFC 791), and a smaller MTU means a broken
	// underlay rather than a deliberate choice.
	minMTU = 576
	// minMTU6 applies when the overlay carries IPv6 (RFC 8200 section 5).
	minMTU6 = 1280
	// maxMTU: the inner packet plus headers must fit a UDP datagram.
	maxMTU = 65535 - encap.OverheadIPv4
	// ifNameSize is IFNAMSIZ, including the terminating NUL.
	ifNameSize = 16
)

// upConfig is `overlay up`'s command line, checked. Building it touches
// nothing on the node and does not contact etcd.
type upConfig struct {
	etcd        lease.ClientOptions
	prefix      string
	kube        *kubeConfig // nil: etcd
	under       underlay
	subnetFile  string
	renewMargin time.Duration
	ipMasq      bool
	mtu         int // 0: derive from the underlay interface
	port        int // 0: from the network config
	tunName     string
	tunFD       int
	tunDriver   tunnel.Driver
	sourceCheck tunnel.SourceCheck
	naive       bool
	healthzAddr string // "" when disabled
	logLevel    string
	logFormat   string
}

// kubeConfig is the --kube-subnet-mgr part of upConfig: everything checked
// locally (kubeconfig, net-conf.json, annotation prefix, node name
// environment) before the API server is contacted.
type kubeConfig struct {
	rest        *rest.Config
	prefix      string
	netConf     *lease.Config
	netConfPath string
	setNU       bool
	getenv      func(string) string
}

// etcdOnlyFlags have no meaning with --kube-subnet-mgr.
var etcdOnlyFlags = []string{"etcd-endpoints", "etcd-prefix", "etcd-cafile", "etcd-certfile", "etcd-keyfile",
	"etcd-username", "etcd-password", "etcd-dial-timeout", "subnet-lease-renew-margin"}

// kubeOnlyFlags have no meaning without it.
var kubeOnlyFlags = []string{"kubeconfig-file", "kube-api-url", "kube-annotation-prefix", "net-config-path", "set-node-network-unavailable"}

// parseKube checks the --kube-subnet-mgr flags: conflicts with etcd flags,
// the annotation prefix, the node name environment, the API server config
// and net-conf.json, in that order, without contacting anything.
func parseKube(c *cli.Context, getenv func(string) string) (*kubeConfig, error) {
	if !c.Bool("kube-subnet-mgr") {
		for _, f := range kubeOnlyFlags {
			if c.IsSet(f) {
				return nil, fmt.Errorf("--%s needs --kube-subnet-mgr (without it, subnets come from etcd)", f)
			}
		}
		return nil, nil
	}
	for _, f := range etcdOnlyFlags {
		if c.IsSet(f) {
			return nil, fmt.Errorf("--%s is an etcd flag and cannot be used with --kube-subnet-mgr, which keeps subnets in the Kubernetes API; drop one of them", f)
		}
	}
	k := &kubeConfig{
		prefix:      c.String("kube-annotation-prefix"),
		netConfPath: c.String("net-config-path"),
		setNU:       c.Bool("set-node-network-unavailable"),
		getenv:      getenv,
	}
	if _, err := kube.NewKeys(k.prefix); err != nil {
		return nil, fmt.Errorf("--kube-annotation-prefix: %w", err)
	}
	if err := kube.CheckNodeEnv(getenv); err != nil {
		return nil, fmt.Errorf("--kube-subnet-mgr: %w", err)
	}
	var err error
	if k.rest, err = (kube.ClientOptions{Kubeconfig: c.String("kubeconfig-file"), APIURL: c.String("kube-api-url"), Getenv: getenv}).RESTConfig(); err != nil {
		return nil, fmt.Errorf("--kube-subnet-mgr: %w", err)
	}
	if k.netConf, err = kube.ReadNetConf(k.netConfPath); err != nil {
		return nil, err
	}
	return k, nil
}

// parseUp checks every flag of `overlay up` and returns the first problem
// with a message that says what to fix.
func parseUp(c *cli.Context, log *slog.Logger) (*upConfig, error) {
	if c.NArg() > 0 {
		return nil, fmt.Errorf("up takes no arguments, got %q (flags go before them?)", c.Args().Slice())
	}
	cfg := &upConfig{
		prefix:     c.String("etcd-prefix"),
		subnetFile: c.String("subnet-file"),
		ipMasq:     c.Bool("ip-masq"),
		mtu:        c.Int("mtu"),
		port:       c.Int("port"),
		tunName:    c.String("tun-name"),
		tunFD:      c.Int("tun-fd"),
		naive:      c.Bool("naive"),
		logLevel:   c.String("log-level"),
		logFormat:  c.String("log-format"),
	}
	if cfg.ipMasq {
		if _, err := newMasquerader(netip.Prefix{}, netip.Prefix{}); err != nil {
			return nil, fmt.Errorf("--ip-masq: %w; install nftables or iptables, or drop --ip-masq", err)
		}
	}

	switch b := c.String("backend"); b {
	case "userspace":
	case "vxlan", "udp", "host-gw", "ipip", "wireguard", "alloc", "ipsec", "tencent-vpc", "alivpc", "aws-vpc", "gce":
		return nil, fmt.Errorf("--backend %q is a flanneld backend; overlay runs only --backend=userspace "+
			"(it speaks the vxlan wire format, so it joins clusters whose config says \"Type\": \"vxlan\")", b)
	default:
		return nil, fmt.Errorf("--backend %q: unknown backend; want userspace", b)
	}
	var err error
	if cfg.kube, err = parseKube(c, os.Getenv); err != nil {
		return nil, err
	}
	if cfg.kube == nil {
		if err := checkPrefix(cfg.prefix); err != nil {
			return nil, err
		}
		cfg.etcd = etcdClientOptions(c, log)
		if _, err := cfg.etcd.TLSConfig(); err != nil {
			return nil, fmt.Errorf("%w (check --etcd-cafile, --etcd-certfile, --etcd-keyfile)", err)
		}
	}

	m := c.Int("subnet-lease-renew-margin")
	if m <= 0 || time.Duration(m)*time.Minute >= lease.DefaultTTL {
		return nil, fmt.Errorf("--subnet-lease-renew-margin %d: want minutes between 1 and %d (leases last %v)",
			m, int(lease.DefaultTTL/time.Minute)-1, lease.DefaultTTL)
	}
	cfg.renewMargin = time.Duration(m) * time.Minute

	if cfg.subnetFile == "" {
		return nil, errors.New("--subnet-file is empty: the CNI plugin and mk-docker-opts read the subnet from it")
	}
	if fi, err := os.Stat(filepath.Dir(cfg.subnetFile)); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("--subnet-file %s: %s is not a directory", cfg.subnetFile, filepath.Dir(cfg.subnetFile))
	}

	if cfg.mtu != 0 && (cfg.mtu < minMTU || cfg.mtu > maxMTU) {
		return nil, fmt.Errorf("--mtu %d: want %d to %d (or 0 for the underlay MTU minus %d)", cfg.mtu, minMTU, maxMTU, encap.OverheadIPv4)
	}
	if cfg.port < 0 || cfg.port > 65535 {
		return nil, fmt.Errorf("--port %d: want 1 to 65535, or 0 for the network config's port", cfg.port)
	}
	if cfg.tunFD < 0 {
		cfg.tunFD = 0
		if len(cfg.tunName) >= ifNameSize || strings.ContainsAny(cfg.tunName, "/: \t") || cfg.tunName == "." || cfg.tunName == ".." {
			return nil, fmt.Errorf("--tun-name %q: want an interface name of at most %d characters, without / : or spaces", cfg.tunName, ifNameSize-1)
		}
	} else if cfg.tunFD < 3 {
		return nil, fmt.Errorf("--tun-fd %d is standard input, output or error, not a TUN device", cfg.tunFD)
	}
	if cfg.tunDriver, err = tunnel.ParseDriver(c.String("tun-driver")); err != nil {
		return nil, fmt.Errorf("--tun-driver: %w", err)
	}
	if cfg.sourceCheck, err = tunnel.ParseSourceCheck(c.String("source-check")); err != nil {
		return nil, fmt.Errorf("--source-check: %w", err)
	}
	if cfg.naive && cfg.tunDriver == tunnel.DriverOffload {
		return nil, errors.New("--naive turns offloads off; it cannot be combined with --tun-driver=offload")
	}

	if port := c.Int("healthz-port"); port != 0 {
		ip := c.String("healthz-ip")
		if _, err := netip.ParseAddr(ip); err != nil {
			return nil, fmt.Errorf("--healthz-ip %q: want an IP address such as 127.0.0.1", ip)
		}
		if port < 0 || port > 65535 {
			return nil, fmt.Errorf("--healthz-port %d: want 1 to 65535, or 0 to disable", port)
		}
		cfg.healthzAddr = net.JoinHostPort(ip, strconv.Itoa(port))
	}

	cfg.under, err = findUnderlay(c.StringSlice("iface"), c.StringSlice("iface-regex"), c.String("public-ip"), c.String("public-ipv6"))
	if err != nil {
		return nil, err
	}
	if cfg.mtu == 0 {
		cfg.mtu = cfg.under.iface.MTU - encap.OverheadIPv4
		if cfg.mtu < minMTU {
			return nil, fmt.Errorf("interface %s has MTU %d, leaving %d for the overlay after %d bytes of VXLAN overhead; "+
				"raise the underlay MTU or pick another --iface", cfg.under.iface.Name, cfg.under.iface.MTU, cfg.mtu, encap.OverheadIPv4)
		}
		cfg.mtu = min(cfg.mtu, maxMTU)
	}
	return cfg, nil
}
