package main

import (
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"overlay/lease/kube"
)

// envs returns the environment variables that may set the flag name:
// OVERLAY_<NAME> first, then flannel's FLANNELD_<NAME>, so an existing
// flanneld environment file (EnvironmentFile= in its unit) keeps working.
func envs(name string) []string {
	n := strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
	return []string{"OVERLAY_" + n, "FLANNELD_" + n}
}

// Flag categories, so `overlay up --help` reads as an operator's checklist.
const (
	catEtcd     = "etcd"
	catKube     = "kubernetes (--kube-subnet-mgr)"
	catNode     = "node and underlay"
	catDatapath = "datapath"
	catOps      = "operations"
)

// Defaults shared by several commands.
const (
	defaultEtcdEndpoints = "http://127.0.0.1:2379"
	defaultEtcdPrefix    = "/coreos.com/network"
	defaultSubnetFile    = "/run/flannel/subnet.env"
	defaultNetConfPath   = "/etc/kube-flannel/net-conf.json"
	defaultHealthzIP     = "127.0.0.1"
	// defaultHealthzPort is where /healthz, /readyz, /metrics and /status
	// answer. flanneld leaves its health endpoint off by default; overlay
	// keeps it on (bound to loopback) because `overlay status` reads it.
	defaultHealthzPort = 8471
)

// etcdFlags are the flags of every command that talks to etcd, with
// flanneld's names.
func etcdFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "etcd-endpoints", Value: defaultEtcdEndpoints, EnvVars: envs("etcd-endpoints"), Category: catEtcd,
			Usage: "comma-separated list of etcd endpoints"},
		&cli.StringFlag{Name: "etcd-prefix", Value: defaultEtcdPrefix, EnvVars: envs("etcd-prefix"), Category: catEtcd,
			Usage: "etcd prefix holding config and subnets/"},
		&cli.StringFlag{Name: "etcd-cafile", EnvVars: envs("etcd-cafile"), Category: catEtcd,
			Usage: "CA bundle to verify etcd's certificate"},
		&cli.StringFlag{Name: "etcd-certfile", EnvVars: envs("etcd-certfile"), Category: catEtcd,
			Usage: "client certificate for etcd (with --etcd-keyfile)"},
		&cli.StringFlag{Name: "etcd-keyfile", EnvVars: envs("etcd-keyfile"), Category: catEtcd,
			Usage: "client key for etcd (with --etcd-certfile)"},
		&cli.StringFlag{Name: "etcd-username", EnvVars: envs("etcd-username"), Category: catEtcd,
			Usage: "username for etcd authentication"},
		&cli.StringFlag{Name: "etcd-password", EnvVars: envs("etcd-password"), Category: catEtcd,
			Usage: "password for etcd authentication"},
		&cli.DurationFlag{Name: "etcd-dial-timeout", Value: 5 * time.Second, EnvVars: envs("etcd-dial-timeout"), Category: catEtcd,
			Usage: "time to wait for an etcd connection before retrying"},
	}
}

// statusFlags locate a running agent's local HTTP endpoint.
func statusFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "healthz-ip", Value: defaultHealthzIP, EnvVars: envs("healthz-ip"), Category: catOps,
			Usage: "address of the agent's health, metrics and status endpoint"},
		&cli.IntFlag{Name: "healthz-port", Value: defaultHealthzPort, EnvVars: envs("healthz-port"), Category: catOps,
			Usage: "port of the agent's health, metrics and status endpoint (0 disables it)"},
	}
}

// kubeFlags are flanneld's flags for its Kubernetes subnet manager, with
// flanneld's names and defaults.
func kubeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "kube-subnet-mgr", EnvVars: envs("kube-subnet-mgr"), Category: catKube,
			Usage: "take the subnet from this node's Node (spec.podCIDR) and the peers from the other Nodes, instead of etcd"},
		&cli.StringFlag{Name: "kubeconfig-file", EnvVars: envs("kubeconfig-file"), Category: catKube,
			Usage: "kubeconfig file (default: the pod's service account when run in a pod)"},
		&cli.StringFlag{Name: "kube-api-url", EnvVars: envs("kube-api-url"), Category: catKube,
			Usage: "API server URL (overrides the kubeconfig's server)"},
		&cli.StringFlag{Name: "kube-annotation-prefix", Value: kube.DefaultPrefix, EnvVars: envs("kube-annotation-prefix"), Category: catKube,
			Usage: "prefix of flannel's Node annotations"},
		&cli.StringFlag{Name: "net-config-path", Value: defaultNetConfPath, EnvVars: envs("net-config-path"), Category: catKube,
			Usage: "network config file (flannel's net-conf.json)"},
		&cli.BoolFlag{Name: "set-node-network-unavailable", Value: true, EnvVars: envs("set-node-network-unavailable"), Category: catKube,
			Usage: "set the Node's NetworkUnavailable condition to False once the node carries traffic"},
	}
}

// upFlags are the flags of `overlay up`: flanneld's names where flanneld has
// the flag, ours for the userspace datapath.
func upFlags() []cli.Flag {
	fl := etcdFlags()
	fl = append(fl, kubeFlags()...)
	fl = append(fl,
		&cli.StringSliceFlag{Name: "iface", EnvVars: envs("iface"), Category: catNode,
			Usage: "underlay interface, by name or address (repeatable; the first that exists wins; default: the default route's interface)"},
		&cli.StringSliceFlag{Name: "iface-regex", EnvVars: envs("iface-regex"), Category: catNode,
			Usage: "regular expression matched against interface names and addresses (repeatable; used when --iface finds nothing)"},
		&cli.StringFlag{Name: "public-ip", EnvVars: envs("public-ip"), Category: catNode,
			Usage: "underlay address other nodes send to (default: the interface's first IPv4 address)"},
		&cli.StringFlag{Name: "public-ipv6", EnvVars: envs("public-ipv6"), Category: catNode,
			Usage: "IPv6 underlay address published in the lease (dual stack)"},
		&cli.StringFlag{Name: "subnet-file", Value: defaultSubnetFile, EnvVars: envs("subnet-file"), Category: catNode,
			Usage: "file to write the node's subnet environment to (read back on restart to keep the subnet)"},
		&cli.IntFlag{Name: "subnet-lease-renew-margin", Value: 60, EnvVars: envs("subnet-lease-renew-margin"), Category: catNode,
			Usage: "minutes before the lease expires to renew it"},
		&cli.BoolFlag{Name: "ip-masq", EnvVars: envs("ip-masq"), Category: catNode,
			Usage: "masquerade pod traffic that leaves the overlay network (nftables or iptables)"},
		&cli.StringFlag{Name: "backend", Value: "userspace", EnvVars: envs("backend"), Category: catDatapath,
			Usage: "datapath backend; only \"userspace\" (TUN + UDP, no kernel VXLAN)"},
		&cli.IntFlag{Name: "mtu", EnvVars: envs("mtu"), Category: catDatapath,
			Usage: "overlay MTU (default: underlay interface MTU minus the VXLAN overhead)"},
		&cli.IntFlag{Name: "port", EnvVars: envs("port"), Category: catDatapath,
			Usage: "UDP port for VXLAN (default: the network config's Backend.Port, else 8472)"},
		&cli.StringFlag{Name: "tun-name", Value: "overlay0", EnvVars: envs("tun-name"), Category: catDatapath,
			Usage: "name of the TUN device to create"},
		&cli.IntFlag{Name: "tun-fd", Value: -1, EnvVars: envs("tun-fd"), Category: catDatapath,
			Usage: "use this already-open TUN file descriptor instead of creating a device (rootless, privileged helpers)"},
		&cli.StringFlag{Name: "tun-driver", Value: "auto", EnvVars: envs("tun-driver"), Category: catDatapath,
			Usage: "TUN driver: auto (offloads when the kernel has them), offload, or plain"},
		&cli.StringFlag{Name: "source-check", Value: "strict", EnvVars: envs("source-check"), Category: catDatapath,
			Usage: "which received VXLAN frames may enter the pod network: strict (sent from a lease's PublicIP, inner source in that lease's subnet), " +
				"nat (for NAT between nodes: the sender is the lease with the frame's inner source MAC), or off (any well-formed frame, as kernel VXLAN)"},
		&cli.BoolFlag{Name: "naive", EnvVars: envs("naive"), Category: catDatapath,
			Usage: "one packet per system call, no offloads: the benchmark floor, not for production"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: envs("log-level"), Category: catOps,
			Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: envs("log-format"), Category: catOps,
			Usage: "text or json"},
	)
	return append(fl, statusFlags()...)
}
