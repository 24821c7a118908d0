package cluster

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Addressing of every cluster the harness builds.
var (
	// HubIP is the hub bridge's address on the underlay; etcd listens here.
	HubIP = netip.MustParseAddr("172.30.250.1")
	// Underlay is the underlay network shared by the hub and every node.
	Underlay = netip.MustParsePrefix("172.30.250.0/24")
)

// Defaults of [Options].
const (
	DefaultEtcdPrefix = "/coreos.com/network"
	DefaultNetwork    = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`
	// EtcdPort is the etcd client port on HubIP.
	EtcdPort = 2379
	// HealthzPort is where every agent's /healthz, /readyz, /metrics and
	// /status answer, on 127.0.0.1 inside its node namespace.
	HealthzPort = 8471
	// VXLANPort is flannel's (and the Linux kernel's) VXLAN UDP port.
	VXLANPort = 8472
	// UnderlayMTU is the MTU of every underlay link.
	UnderlayMTU = 1500
)

// EtcdEndpoint is the client URL of the cluster's etcd, as agents see it.
func EtcdEndpoint() string {
	return "http://" + netip.AddrPortFrom(HubIP, EtcdPort).String()
}

// NodeUnderlayIP is the underlay address of node i (1-based).
func NodeUnderlayIP(i int) netip.Addr {
	a := HubIP.As4()
	a[3] = byte(10 + i)
	return netip.AddrFrom4(a)
}

// Options configure a [Cluster]. The zero value is not usable: Prefix,
// Binary and WorkDir are required.
type Options struct {
	// Prefix starts the name of every namespace and link, e.g. "ovl-e2e-".
	// At most 9 bytes, so that link names fit IFNAMSIZ.
	Prefix string
	// Binary is the overlay binary: `overlay up` for agent nodes, `overlay
	// etcd` for every cluster's etcd (so no etcd need be installed),
	// `overlay leases`/`config` for the CLI. [BuildOverlay] makes one.
	Binary string
	// EtcdBinary is another etcd server to run instead of `overlay etcd`,
	// taking etcd's own flags; empty means `<Binary> etcd`.
	EtcdBinary string
	// WorkDir holds etcd's data, node logs and subnet.env files. It must
	// exist; the harness never removes it.
	WorkDir string
	// NetworkConfig is the JSON written to <EtcdPrefix>/config. Empty means
	// DefaultNetwork; "-" writes no config.
	NetworkConfig string
	// EtcdPrefix is the flannel etcd prefix; empty means DefaultEtcdPrefix.
	EtcdPrefix string
	// AgentArgs are appended to every `overlay up` command line.
	AgentArgs []string
	// Log receives the harness's own events; nil discards them.
	Log *slog.Logger
	// Kube, when set, runs the cluster in kube mode: a real kube-apiserver
	// over the cluster's etcd, Nodes with pod CIDRs, agents with
	// --kube-subnet-mgr and kernel nodes emulating flanneld's kube mode.
	Kube *KubeOptions
}

// KubeOptions configure a kube-mode [Cluster].
type KubeOptions struct {
	// APIServerBinary is the kube-apiserver-test binary (required; see
	// package overlay/e2e/kubeapi's Build).
	APIServerBinary string
	// AnnotationPrefix is flannel's annotation prefix; empty means
	// flannel.alpha.coreos.com.
	AnnotationPrefix string
}

// NodeKind says what carries a node's pod traffic.
type NodeKind int

const (
	// Agent nodes run `overlay up --backend=userspace`.
	Agent NodeKind = iota
	// KernelFlannel nodes run no overlay: the harness programs kernel VXLAN
	// exactly as flannel's vxlan backend would.
	KernelFlannel
	// External nodes get their namespace, underlay link (and, in kube
	// mode, their Node) but no datapath: the caller starts one in the
	// node's namespace, such as a real flanneld writing n.SubnetFile, and
	// then calls [Node.AdoptExternal] to get the node's pods.
	External
)

func (k NodeKind) String() string {
	switch k {
	case Agent:
		return "overlay"
	case KernelFlannel:
		return "kernel-flannel"
	case External:
		return "external"
	}
	return "NodeKind(" + strconv.Itoa(int(k)) + ")"
}

// NodeOptions configure one node. The zero value is an agent node with two
// pods.
type NodeOptions struct {
	Kind NodeKind
	// Pods is the number of pod namespaces behind the node's cni0 bridge:
	// 0 means 2; at most 8.
	Pods int
	// Args are appended to this agent's `overlay up` command line.
	Args []string
	// Rootless, when set, runs the agent without root (agent nodes only).
	Rootless *Rootless
	// UnderlayGSO keeps segmentation offload on a kernel node's eth0, so
	// its VXLAN frames cross the veth as unsegmented super-frames, as
	// between containers on one host. By default (false) the harness turns
	// TSO and GSO off there, so frames on the underlay are at most the MTU,
	// as on a physical wire between hosts.
	UnderlayGSO bool
}

// Rootless describes an agent node run as an unprivileged user, the way a
// rootless container runtime runs one: the user creates a user namespace
// (mapping itself to uid 0) and the node's network namespace inside it
// (`setpriv --reuid U unshare --user --map-root-user --net`), and the agent
// runs there (`nsenter --user --net`) as uid 0 of that user namespace: the
// unprivileged user outside, with capabilities only over its own
// namespaces. The harness, as root, still wires the node's veth, bridge and
// pods. The agent must be able to open /dev/net/tun (mode 0666), execute
// the overlay binary, and traverse WorkDir: the harness adds o+x to WorkDir
// and hands the node's directory (subnet.env) to the user.
type Rootless struct {
	// UID and GID of the unprivileged user, e.g. 65534 (nobody).
	UID, GID uint32
}

// PingOptions tune [Pod.Ping]. The zero value sends 3 echo requests of the
// default size, 200 ms apart, waiting up to 2 s for each reply.
type PingOptions struct {
	Count        int           // 0 means 3
	Size         int           // ICMP payload bytes (ping -s); 0 means ping's default
	DontFragment bool          // ping -M do
	Interval     time.Duration // 0 means 200ms
	Wait         time.Duration // per reply (ping -W); 0 means 2s
	TTL          int           // ping -t; 0 means ping's default
}

// PingResult is ping's output, parsed.
type PingResult struct {
	Transmitted, Received int
	// RTTMin, RTTAvg and RTTMax are zero when nothing was received.
	RTTMin, RTTAvg, RTTMax time.Duration
	// FragNeeded is set when ping reported that a packet could not be sent
	// unfragmented: a local "message too long" or an ICMP "Frag needed".
	FragNeeded bool
	// MTU is the path MTU ping reported with FragNeeded, else 0.
	MTU int
	// Output is ping's complete output.
	Output string
}

// OK reports whether every echo request got its reply.
func (r PingResult) OK() bool { return r.Transmitted > 0 && r.Received == r.Transmitted }

var (
	pingSummaryRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
	pingRTTRE     = regexp.MustCompile(`(?:rtt|round-trip) min/avg/max(?:/mdev|/stddev)? = ([\d.]+)/([\d.]+)/([\d.]+)`)
	pingMTURE     = regexp.MustCompile(`(?i)(?:frag needed and DF set|message too long)[^\n]*?mtu\s*=\s*(\d+)`)
)

// ParsePing parses the output of iputils or busybox ping.
func ParsePing(out string) (PingResult, error) {
	r := PingResult{Output: out}
	m := pingSummaryRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("ping output has no summary line: %q", lastLines(out, 4))
	}
	r.Transmitted, _ = strconv.Atoi(m[1])
	r.Received, _ = strconv.Atoi(m[2])
	if m := pingRTTRE.FindStringSubmatch(out); m != nil {
		r.RTTMin, r.RTTAvg, r.RTTMax = ms(m[1]), ms(m[2]), ms(m[3])
	}
	if m := pingMTURE.FindStringSubmatch(out); m != nil {
		r.FragNeeded = true
		r.MTU, _ = strconv.Atoi(m[1])
	} else if strings.Contains(strings.ToLower(out), "message too long") || strings.Contains(out, "Frag needed") {
		r.FragNeeded = true
	}
	return r, nil
}

func ms(s string) time.Duration {
	f, _ := strconv.ParseFloat(s, 64)
	return time.Duration(f * float64(time.Millisecond))
}

// TransferResult describes one TCP transfer between two pods.
type TransferResult struct {
	Bytes    int64
	Duration time.Duration
	// SentSHA256 and ReceivedSHA256 are the digests computed by the sender
	// and by the receiver; a transfer that returns no error has them equal.
	SentSHA256, ReceivedSHA256 [32]byte
}

// Mbps is the transfer's goodput in megabits per second.
func (r TransferResult) Mbps() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Bytes) * 8 / r.Duration.Seconds() / 1e6
}

// Lease is one subnet lease as flannel keeps it in etcd.
type Lease struct {
	Key         string       // full etcd key, <prefix>/subnets/10.244.62.0-24
	Subnet      netip.Prefix // 10.244.62.0/24
	PublicIP    netip.Addr
	BackendType string
	VNI         int
	VtepMAC     net.HardwareAddr
	// EtcdLease is the etcd lease ID the key is bound to; 0 is a reservation.
	EtcdLease int64
	// Value is the raw JSON value.
	Value []byte
}

// leaseValue is the exact shape of flannel's lease JSON: field order, null
// PublicIPv6 and all. json.Marshal keeps the struct's field order.
type leaseValue struct {
	PublicIP    string          `json:"PublicIP"`
	PublicIPv6  *string         `json:"PublicIPv6"`
	BackendType string          `json:"BackendType"`
	BackendData json.RawMessage `json:"BackendData"`
}

type vxlanBackendData struct {
	VNI     int    `json:"VNI"`
	VtepMAC string `json:"VtepMAC"`
}

// EncodeLeaseValue returns flannel's lease JSON for a vxlan node, e.g.
// {"PublicIP":"172.30.250.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d6"}}.
func EncodeLeaseValue(publicIP netip.Addr, vni int, mac net.HardwareAddr) ([]byte, error) {
	bd, err := json.Marshal(vxlanBackendData{VNI: vni, VtepMAC: mac.String()})
	if err != nil {
		return nil, err
	}
	return json.Marshal(leaseValue{PublicIP: publicIP.String(), BackendType: "vxlan", BackendData: bd})
}

// SubnetKey returns the etcd key of a subnet lease under prefix.
func SubnetKey(prefix string, subnet netip.Prefix) string {
	return strings.TrimSuffix(prefix, "/") + "/subnets/" + subnet.Addr().String() + "-" + strconv.Itoa(subnet.Bits())
}

// ParseLease parses one key and value under <prefix>/subnets/. Dual-stack
// keys (…-24&fc00::-64) yield their IPv4 subnet.
func ParseLease(key string, value []byte) (Lease, error) {
	l := Lease{Key: key, Value: value}
	i := strings.LastIndex(key, "/subnets/")
	if i < 0 {
		return l, fmt.Errorf("lease key %q: not under subnets/", key)
	}
	name := key[i+len("/subnets/"):]
	if j := strings.IndexByte(name, '&'); j >= 0 {
		name = name[:j]
	}
	p, err := netip.ParsePrefix(strings.Replace(name, "-", "/", 1))
	if err != nil {
		return l, fmt.Errorf("lease key %q: %w", key, err)
	}
	l.Subnet = p
	var v struct {
		PublicIP    string
		BackendType string
		BackendData json.RawMessage
	}
	if err := json.Unmarshal(value, &v); err != nil {
		return l, fmt.Errorf("lease %s: %w", key, err)
	}
	l.BackendType = v.BackendType
	if l.PublicIP, err = netip.ParseAddr(v.PublicIP); err != nil {
		return l, fmt.Errorf("lease %s: PublicIP: %w", key, err)
	}
	if v.BackendType == "vxlan" {
		var bd struct {
			VNI     int
			VtepMAC string
		}
		if err := json.Unmarshal(v.BackendData, &bd); err != nil {
			return l, fmt.Errorf("lease %s: BackendData: %w", key, err)
		}
		l.VNI = bd.VNI
		if l.VtepMAC, err = net.ParseMAC(bd.VtepMAC); err != nil {
			return l, fmt.Errorf("lease %s: VtepMAC: %w", key, err)
		}
	}
	return l, nil
}

// Metrics is a Prometheus text exposition, flattened: the key is the metric
// name followed by its labels exactly as exposed (`name{a="b"}`).
type Metrics map[string]float64

// ParseMetrics parses the Prometheus text format, ignoring comments and
// timestamps.
func ParseMetrics(text []byte) (Metrics, error) {
	m := Metrics{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// The series ends at the closing brace, or at the first space.
		end := strings.IndexByte(line, ' ')
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			end = i + 1
		}
		if end <= 0 || end >= len(line) {
			return nil, fmt.Errorf("metrics line %q: no value", line)
		}
		fields := strings.Fields(line[end:])
		if len(fields) == 0 {
			return nil, fmt.Errorf("metrics line %q: no value", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		m[line[:end]] = v
	}
	return m, sc.Err()
}

// Sum adds every series of the metric name whose labels contain all of the
// given label="value" pairs (e.g. Sum("overlay_drops_total", `reason="bad_vni"`)).
func (m Metrics) Sum(name string, labels ...string) float64 {
	var sum float64
	for k, v := range m {
		series, rest, _ := strings.Cut(k, "{")
		if series != name {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
				break
			}
		}
		if ok {
			sum += v
		}
	}
	return sum
}

// DemoOptions configure [Demo].
type DemoOptions struct {
	// Binary is the overlay binary (normally os.Executable()); it runs etcd
	// (`overlay etcd`) and the agents. Required.
	Binary string
	// EtcdBinary overrides the etcd server; empty means `<Binary> etcd`.
	EtcdBinary string
	// Nodes is the number of nodes; 0 means 3.
	Nodes int
	// Throughput is the length of the throughput check; 0 means 3 s.
	Throughput time.Duration
	// WorkDir keeps etcd's data and the node logs; empty means a new
	// temporary directory, removed when the demo succeeds.
	WorkDir string
	// Prefix names the demo's namespaces; empty means "ovl-demo-".
	Prefix string
	// AgentArgs are appended to every `overlay up` command line.
	AgentArgs []string
	// Kube runs the demo in kube mode: a real kube-apiserver over the
	// etcd, Nodes with pod CIDRs, agents with --kube-subnet-mgr.
	Kube bool
	// APIServerBinary is the kube-apiserver-test binary for Kube; empty
	// means build it from this source tree (package overlay/e2e/kubeapi),
	// which is cached after the first time.
	APIServerBinary string
}

// ErrAgentExited means an agent process ended while the harness waited for
// it to become ready; its log tail is in the error text.
var ErrAgentExited = errors.New("agent exited")

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			n--
			if n == 0 {
				return s[i+1:]
			}
		}
	}
	return s
}

// AgentStatus is the part of an agent's GET /status document the harness
// reads (the agent serves more; unknown fields are ignored).
type AgentStatus struct {
	Ready        bool       `json:"ready"`
	PublicIP     string     `json:"publicIP"`
	Subnet       string     `json:"subnet"`
	VtepMAC      string     `json:"vtepMAC"`
	VNI          uint32     `json:"vni"`
	Port         int        `json:"port"`
	MTU          int        `json:"mtu"`
	TUN          string     `json:"tun"`
	TUNMode      string     `json:"tunMode"`
	GSO          bool       `json:"gso"`
	GRO          bool       `json:"gro"`
	SourceCheck  string     `json:"sourceCheck"`
	LeaseExpires *time.Time `json:"leaseExpires"`
	// ChecksumSteering: datagrams with an outer UDP checksum are received
	// apart and their inner checksums trusted; Checksums counts them.
	ChecksumSteering bool `json:"checksumSteering"`
	Checksums        struct {
		OuterVerified    uint64 `json:"outerVerified"`
		PartialCompleted uint64 `json:"partialCompleted"`
	} `json:"checksums"`
	Peers []PeerStatus `json:"peers"`
	// SubnetManager is "etcd" or "kube"; Node is the agent's Node name in
	// kube mode.
	SubnetManager  string                       `json:"subnet_manager"`
	Node           string                       `json:"node"`
	MalformedPeers uint64                       `json:"malformed_peers"`
	Drops          map[string]map[string]uint64 `json:"drops"`
	Totals         map[string]Traffic           `json:"totals"`
}

// PeerStatus is one peer in an agent's /status.
type PeerStatus struct {
	Subnet   string  `json:"subnet"`
	Endpoint string  `json:"endpoint"`
	VtepMAC  string  `json:"vtepMAC"`
	Node     string  `json:"node"`
	Tx       Traffic `json:"tx"`
	Rx       Traffic `json:"rx"`
}

// Traffic counts packets and bytes.
type Traffic struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Peer returns the peer with the given subnet.
func (s AgentStatus) Peer(subnet netip.Prefix) (PeerStatus, bool) {
	for _, p := range s.Peers {
		if pp, err := netip.ParsePrefix(p.Subnet); err == nil && pp.Masked() == subnet.Masked() {
			return p, true
		}
	}
	return PeerStatus{}, false
}

// DropTotal adds the drops of every direction and reason.
func (s AgentStatus) DropTotal() uint64 {
	var n uint64
	for _, reasons := range s.Drops {
		for _, v := range reasons {
			n += v
		}
	}
	return n
}
