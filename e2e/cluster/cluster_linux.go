package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"overlay/e2e/kubeapi"
)

// Cluster is a hub namespace with etcd and a set of nodes. Create one with
// New and release everything it holds with Close. Methods are safe for
// concurrent use.
type Cluster struct {
	opts       Options
	etcdPrefix string
	log        *slog.Logger
	hub        NS
	bridge     string

	client *clientv3.Client
	// kube is the admin client of the apiserver in kube mode, set by New.
	kube             *KubeClient
	annotationPrefix string

	mu       sync.Mutex // guards the fields below
	nodes    []*Node
	hosts    []*Host
	nextNode int
	etcd     *proc
	etcdBin  []string // binary and leading args ("overlay", "etcd")
	// apiserver is the kube-mode cluster's kube-apiserver (nil in etcd mode).
	apiserver *kubeapi.Server
	closed    bool
	closeErr  error
}

// New builds the hub namespace with its underlay bridge, starts etcd in it
// and writes the network config. On error everything already created is
// torn down.
func New(ctx context.Context, opts Options) (c *Cluster, err error) {
	if err := validPrefix(opts.Prefix); err != nil {
		return nil, err
	}
	if opts.Binary == "" {
		return nil, errors.New("cluster: Options.Binary is required: the overlay binary runs etcd (`overlay etcd`) and the agents")
	}
	if st, err := os.Stat(opts.WorkDir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("cluster work dir %q: not a directory (%v)", opts.WorkDir, err)
	}
	c = &Cluster{
		opts:       opts,
		etcdPrefix: strings.TrimSuffix(opts.EtcdPrefix, "/"),
		log:        opts.Log,
		bridge:     opts.Prefix + "br",
		nextNode:   1,
	}
	if c.etcdPrefix == "" {
		c.etcdPrefix = DefaultEtcdPrefix
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
			c = nil
		}
	}()

	if c.hub, err = addNS(ctx, opts.Prefix+"hub"); err != nil {
		return c, err
	}
	err = c.hub.netlink(func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: c.bridge, MTU: UnderlayMTU}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge %s: %w", c.bridge, err)
		}
		if err := h.AddrAdd(br, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(HubIP, Underlay.Bits()))}); err != nil {
			return fmt.Errorf("address on %s: %w", c.bridge, err)
		}
		return h.LinkSetUp(br)
	})
	if err != nil {
		return c, fmt.Errorf("hub %s: %w", c.hub, err)
	}

	c.etcdBin = c.etcdCommand()
	if err = c.StartEtcd(ctx); err != nil {
		return c, err
	}
	c.client, err = clientv3.New(clientv3.Config{
		Endpoints:   []string{EtcdEndpoint()},
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return c.hub.DialContext(ctx, "tcp", addr)
		})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		return c, fmt.Errorf("etcd client: %w", err)
	}
	if err = c.waitEtcd(ctx); err != nil {
		return c, err
	}
	if opts.Kube != nil {
		return c, c.startKube(ctx)
	}
	if cfg := c.networkConfig(); cfg != "" {
		if _, err = c.client.Put(ctx, c.etcdPrefix+"/config", cfg); err != nil {
			return c, fmt.Errorf("write network config: %w", err)
		}
	}
	return c, nil
}

func validPrefix(p string) error {
	if p == "" || len(p) > 9 {
		return fmt.Errorf("cluster prefix %q: want 1 to 9 bytes (link names must fit IFNAMSIZ)", p)
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("cluster prefix %q: want lowercase letters, digits and '-'", p)
		}
	}
	return nil
}

func (c *Cluster) networkConfig() string {
	switch c.opts.NetworkConfig {
	case "":
		return DefaultNetwork
	case "-":
		return ""
	}
	return c.opts.NetworkConfig
}

// Prefix is the cluster's namespace and link name prefix.
func (c *Cluster) Prefix() string { return c.opts.Prefix }

// EtcdPrefix is the flannel etcd prefix the cluster uses.
func (c *Cluster) EtcdPrefix() string { return c.etcdPrefix }

// Hub is the hub namespace, which holds the underlay bridge and etcd.
func (c *Cluster) Hub() NS { return c.hub }

// Etcd is the harness's etcd client; its connections are made from inside
// the hub namespace. It stays valid across StopEtcd/StartEtcd.
func (c *Cluster) Etcd() *clientv3.Client { return c.client }

// EtcdLogPath is the etcd server's log file.
func (c *Cluster) EtcdLogPath() string { return filepath.Join(c.opts.WorkDir, "etcd.log") }

// EtcdFlags are the flags every overlay command needs to reach this
// cluster's etcd.
func (c *Cluster) EtcdFlags() []string {
	return []string{"--etcd-endpoints=" + EtcdEndpoint(), "--etcd-prefix=" + c.etcdPrefix}
}

// Nodes returns the nodes in the order they were added.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.nodes...)
}

// Pods returns every pod of every node.
func (c *Cluster) Pods() []*Pod {
	var pods []*Pod
	for _, n := range c.Nodes() {
		pods = append(pods, n.pods()...)
	}
	return pods
}

// etcdCommand picks the etcd server: Options.EtcdBinary, else `overlay
// etcd`.
func (c *Cluster) etcdCommand() []string {
	if c.opts.EtcdBinary != "" {
		return []string{c.opts.EtcdBinary}
	}
	return []string{c.opts.Binary, "etcd"}
}

// EtcdServer is the command line that runs etcd (binary and leading args).
func (c *Cluster) EtcdServer() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.etcdBin...)
}

// StartEtcd starts etcd in the hub namespace (again, after StopEtcd, with
// the same data directory) and waits until it serves requests.
func (c *Cluster) StartEtcd(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	if c.etcd != nil && !c.etcd.exited() {
		c.mu.Unlock()
		return nil
	}
	// The member name is "default" because that is the only name Debian's
	// etcd accepts without an --initial-cluster flag, which `overlay etcd`
	// need not have: the same arguments work for both servers.
	args := append(append([]string(nil), c.etcdBin[1:]...),
		"--name", "default",
		"--data-dir", filepath.Join(c.opts.WorkDir, "etcd-data"),
		"--listen-client-urls", EtcdEndpoint(),
		"--advertise-client-urls", EtcdEndpoint(),
	)
	cmd := c.hub.Command(context.Background(), c.etcdBin[0], args...)
	cmd.Cancel = nil
	p, err := startProc("etcd", cmd, c.EtcdLogPath())
	if err != nil {
		c.mu.Unlock()
		return err
	}
	c.etcd = p
	c.mu.Unlock()
	c.log.Info("etcd started", "pid", p.pid(), "server", strings.Join(c.etcdBin, " "))
	if c.client != nil {
		return c.waitEtcd(ctx)
	}
	return nil
}

// StopEtcd stops etcd (SIGTERM, then SIGKILL after 10 s) and waits for it
// to exit. Its data directory is kept for StartEtcd.
func (c *Cluster) StopEtcd(ctx context.Context) error {
	c.mu.Lock()
	p := c.etcd
	c.mu.Unlock()
	if p == nil {
		return nil
	}
	c.log.Info("stopping etcd", "pid", p.pid())
	return p.stop(10 * time.Second)
}

// waitEtcd polls until etcd answers a read, the etcd process exits or ctx
// ends.
func (c *Cluster) waitEtcd(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		c.mu.Lock()
		p := c.etcd
		c.mu.Unlock()
		if p != nil && p.exited() {
			return fmt.Errorf("etcd exited: %s; log %s:\n%s", p.exitStatus(), c.EtcdLogPath(), tailFile(c.EtcdLogPath(), 20))
		}
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.client.Get(rctx, c.etcdPrefix+"/config")
		rcancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd not serving (log %s): %w: last error: %v", c.EtcdLogPath(), ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Leases lists the subnet leases in etcd, skipping (and logging) values
// that do not parse.
func (c *Cluster) Leases(ctx context.Context) ([]Lease, error) {
	resp, err := c.client.Get(ctx, c.etcdPrefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	var ls []Lease
	for _, kv := range resp.Kvs {
		l, err := ParseLease(string(kv.Key), kv.Value)
		if err != nil {
			c.log.Warn("skipping malformed lease", "key", string(kv.Key), "err", err)
			continue
		}
		l.EtcdLease = kv.Lease
		ls = append(ls, l)
	}
	return ls, nil
}

// Lease returns the lease of one subnet.
func (c *Cluster) Lease(ctx context.Context, subnet netip.Prefix) (Lease, error) {
	key := SubnetKey(c.etcdPrefix, subnet)
	resp, err := c.client.Get(ctx, key)
	if err != nil {
		return Lease{}, fmt.Errorf("get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return Lease{}, fmt.Errorf("lease %s: %w", key, os.ErrNotExist)
	}
	l, err := ParseLease(key, resp.Kvs[0].Value)
	l.EtcdLease = resp.Kvs[0].Lease
	return l, err
}

// CLI runs the overlay binary in the hub namespace, e.g. CLI(ctx, "leases",
// "list", "--json"); the etcd flags are inserted after the command words
// (the arguments before the first one that starts with "-" or is not a
// lowercase word).
func (c *Cluster) CLI(ctx context.Context, args ...string) ([]byte, error) {
	n := 0
	for n < len(args) && isCommandWord(args[n]) && n < 2 {
		n++
	}
	full := append(append(append([]string(nil), args[:n]...), c.EtcdFlags()...), args[n:]...)
	return c.hub.Run(ctx, c.opts.Binary, full...)
}

func isCommandWord(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r == '-') || s[0] == '-' {
			return false
		}
	}
	return true
}

// DeleteLease deletes a subnet lease the way an operator would, with
// `overlay leases delete` (which also revokes its etcd lease).
func (c *Cluster) DeleteLease(ctx context.Context, subnet netip.Prefix) error {
	_, err := c.CLI(ctx, "leases", "delete", subnet.String())
	return err
}

// AddNode creates a node namespace joined to the hub, starts its datapath
// (an agent, or the kernel flannel emulation), waits until it is ready and
// then builds its cni0 bridge and pods from its subnet.
func (c *Cluster) AddNode(ctx context.Context, opts NodeOptions) (n *Node, err error) {
	if opts.Pods == 0 {
		opts.Pods = 2
	}
	if opts.Pods < 0 || opts.Pods > 8 {
		return nil, fmt.Errorf("node pods %d: want 1 to 8", opts.Pods)
	}
	if opts.Rootless != nil && opts.Kind != Agent {
		return nil, errors.New("rootless applies to agent nodes only")
	}
	if opts.Rootless != nil && c.KubeMode() {
		return nil, errors.New("rootless nodes are not supported in kube mode")
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, net.ErrClosed
	}
	i := c.nextNode
	c.nextNode++
	if i > 200 {
		c.mu.Unlock()
		return nil, errors.New("too many nodes")
	}
	name := fmt.Sprintf("%sn%d", c.opts.Prefix, i)
	n = &Node{
		c:          c,
		Index:      i,
		Name:       name,
		NS:         NS(name),
		Kind:       opts.Kind,
		Underlay:   NodeUnderlayIP(i),
		LogPath:    filepath.Join(c.opts.WorkDir, name+".log"),
		SubnetFile: filepath.Join(c.opts.WorkDir, name, "subnet.env"),
		opts:       opts,
	}
	// Registered before anything is created, so Close finds it all.
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	defer func() {
		if err != nil {
			err = fmt.Errorf("node %s: %w", name, err)
		}
	}()

	if err := os.MkdirAll(filepath.Dir(n.SubnetFile), 0o755); err != nil {
		return n, err
	}
	if opts.Rootless != nil {
		err = n.addRootlessNS(ctx)
	} else {
		_, err = addNS(ctx, name)
	}
	if err != nil {
		return n, err
	}
	if err := c.joinHub(n.NS, fmt.Sprintf("%sn%d", c.opts.Prefix, n.Index), n.Underlay); err != nil {
		return n, err
	}
	if err := n.NS.sysctl("net/ipv4/ip_forward", "1"); err != nil {
		return n, fmt.Errorf("ip_forward: %w", err)
	}
	if c.KubeMode() {
		if err := c.registerNode(ctx, n); err != nil {
			return n, err
		}
	}
	switch opts.Kind {
	case Agent:
		err = n.Start(ctx)
	case KernelFlannel:
		err = n.startKernel(ctx)
	case External:
		c.log.Info("external node ready for its datapath", "node", name)
		return n, nil
	default:
		err = fmt.Errorf("unknown node kind %v", opts.Kind)
	}
	if err != nil {
		return n, err
	}
	if err := n.addPods(ctx); err != nil {
		return n, err
	}
	c.log.Info("node ready", "node", name, "kind", opts.Kind, "subnet", n.Subnet(), "vtep", n.VtepMAC())
	return n, nil
}

// joinHub connects a node (or host) namespace to the hub bridge with a
// veth pair: hubSide on the hub's bridge, eth0 with the underlay address
// addr in ns.
func (c *Cluster) joinHub(ns NS, hubSide string, addr netip.Addr) error {
	nodeNS, err := netns.GetFromName(string(ns))
	if err != nil {
		return err
	}
	defer nodeNS.Close()
	err = c.hub.netlink(func(h *netlink.Handle) error {
		br, err := h.LinkByName(c.bridge)
		if err != nil {
			return err
		}
		v := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: hubSide, MTU: UnderlayMTU, TxQLen: -1},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(nodeNS),
			PeerMTU:       UnderlayMTU,
			PeerTxQLen:    -1,
		}
		if err := h.LinkAdd(v); err != nil {
			return fmt.Errorf("add veth %s: %w", hubSide, err)
		}
		if err := h.LinkSetMaster(v, br); err != nil {
			return fmt.Errorf("attach %s to %s: %w", hubSide, c.bridge, err)
		}
		return h.LinkSetUp(v)
	})
	if err != nil {
		return fmt.Errorf("hub side: %w", err)
	}
	return ns.netlink(func(h *netlink.Handle) error {
		eth, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := h.AddrAdd(eth, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(addr, Underlay.Bits()))}); err != nil {
			return fmt.Errorf("underlay address: %w", err)
		}
		return h.LinkSetUp(eth)
	})
}

// Close stops every agent, emulation, etcd, and deletes every namespace the
// cluster created. It is idempotent and returns the first call's result.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.closeErr
	}
	c.closed = true
	nodes, hosts := c.nodes, c.hosts
	etcd, apiserver := c.etcd, c.apiserver
	c.mu.Unlock()

	// Nodes stop in parallel: each agent may take its SIGTERM grace period.
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.shutdown()
		}()
	}
	wg.Wait()
	if apiserver != nil {
		if err := apiserver.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.client != nil {
		_ = c.client.Close()
	}
	if etcd != nil {
		if err := etcd.stop(10 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var nss []NS
	for _, n := range nodes {
		for _, p := range n.pods() {
			nss = append(nss, p.NS)
		}
		nss = append(nss, n.NS)
	}
	for _, h := range hosts {
		nss = append(nss, h.NS)
	}
	nss = append(nss, c.hub)
	for _, ns := range nss {
		if err := killAndDelete(ctx, ns); err != nil {
			errs = append(errs, err)
		}
	}
	c.mu.Lock()
	c.closeErr = errors.Join(errs...)
	c.mu.Unlock()
	return c.closeErr
}

// killAndDelete kills whatever still runs in a namespace the harness created
// (children it started that did not exit) and deletes the namespace.
func killAndDelete(ctx context.Context, ns NS) error {
	if ns == "" {
		return nil
	}
	if _, err := os.Stat(filepath.Join(netnsDir, string(ns))); err != nil {
		return nil
	}
	if pids, err := ns.pids(ctx); err == nil {
		for _, pid := range pids {
			killPID(pid)
		}
	}
	return ns.delete(ctx)
}

// DumpLogs writes the tail of etcd's log (lines/2) and of every agent's log, each
// under a header naming the file, to w.
func (c *Cluster) DumpLogs(w io.Writer, lines int) {
	fmt.Fprintf(w, "--- %s (last %d lines)\n%s\n", c.EtcdLogPath(), lines/2, tailFile(c.EtcdLogPath(), lines/2))
	if s := c.APIServer(); s != nil {
		fmt.Fprintf(w, "--- %s (last %d lines)\n%s\n", s.LogPath(), lines/2, tailFile(s.LogPath(), lines/2))
	}
	for _, n := range c.Nodes() {
		if n.Kind == Agent {
			fmt.Fprintf(w, "--- %s (last %d lines)\n%s\n", n.LogPath, lines, tailFile(n.LogPath, lines))
		}
	}
}

// Node is one node namespace with its datapath and pods. Exported fields are
// set by AddNode and do not change once it has returned; methods are safe for
// concurrent use.
type Node struct {
	c        *Cluster
	Index    int    // 1-based
	Name     string // namespace name, <prefix>n<Index>
	NS       NS
	Kind     NodeKind
	Underlay netip.Addr // eth0's address and the lease's PublicIP
	// LogPath is the agent's stdout and stderr (agent nodes).
	LogPath string
	// SubnetFile is the agent's --subnet-file.
	SubnetFile string
	Pods       []*Pod
	opts       NodeOptions

	mu      sync.Mutex // guards the fields below
	agent   *proc
	holder  *proc             // rootless: the process that owns the namespaces
	env     map[string]string // subnet.env as last read
	subnet  netip.Prefix
	mtu     int
	vtepMAC net.HardwareAddr
	readyAt time.Time
	kernel  *kernelNode
}

// Subnet is the node's pod subnet (10.244.X.0/24).
func (n *Node) Subnet() netip.Prefix {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.subnet
}

// MTU is the node's overlay MTU (FLANNEL_MTU).
func (n *Node) MTU() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mtu
}

// VtepMAC is the MAC address the node publishes in its lease.
func (n *Node) VtepMAC() net.HardwareAddr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.vtepMAC
}

// ReadyAt is when the node last became ready (agent: /readyz answered 200
// after subnet.env appeared; kernel: its lease was registered).
func (n *Node) ReadyAt() time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.readyAt
}

// SubnetEnv is subnet.env as last read when the agent became ready.
func (n *Node) SubnetEnv() map[string]string {
	n.mu.Lock()
	defer n.mu.Unlock()
	m := make(map[string]string, len(n.env))
	for k, v := range n.env {
		m[k] = v
	}
	return m
}

// PID is the agent's process ID, or 0 when it is not running.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.agent == nil || n.agent.exited() {
		return 0
	}
	return n.agent.pid()
}

// TUNName is the agent's TUN device name.
func (n *Node) TUNName() string { return n.c.opts.Prefix + "tun" }

// AgentArgs is the `overlay up` command line (without the binary) the node
// runs.
func (n *Node) AgentArgs() []string {
	args := []string{"up", "--backend=userspace"}
	if n.c.KubeMode() {
		args = append(args, n.c.kubeAgentArgs()...)
	} else {
		args = append(args, "--etcd-endpoints="+EtcdEndpoint(), "--etcd-prefix="+n.c.etcdPrefix)
	}
	args = append(args,
		"--iface=eth0",
		"--public-ip="+n.Underlay.String(),
		"--subnet-file="+n.SubnetFile,
		"--healthz-ip=127.0.0.1",
		"--healthz-port="+strconv.Itoa(HealthzPort),
		"--tun-name="+n.TUNName(),
		"--log-level=debug",
	)
	args = append(args, n.c.opts.AgentArgs...)
	return append(args, n.opts.Args...)
}

// Start starts the node's datapath and waits until it is ready: for an
// agent, `overlay up` until subnet.env exists and /readyz answers 200; for
// a kernel node, the lease watcher. Starting a running node does nothing.
func (n *Node) Start(ctx context.Context) error {
	if n.Kind == KernelFlannel {
		return n.startKernel(ctx)
	}
	n.mu.Lock()
	if n.agent != nil && !n.agent.exited() {
		n.mu.Unlock()
		return nil
	}
	var cmd *exec.Cmd
	if n.opts.Rootless != nil {
		// uid 0 of the node's user namespace: the unprivileged user outside.
		cmd = command(context.Background(), "nsenter", append([]string{
			"--target", strconv.Itoa(n.holder.pid()), "--user", "--net", "--", n.c.opts.Binary}, n.AgentArgs()...)...)
	} else {
		cmd = n.NS.Command(context.Background(), n.c.opts.Binary, n.AgentArgs()...)
	}
	if n.c.KubeMode() {
		// flanneld's way to name its Node, as the DaemonSet sets it.
		cmd.Env = append(os.Environ(), "NODE_NAME="+n.Name)
	}
	cmd.Cancel = nil
	p, err := startProc(n.Name+" agent", cmd, n.LogPath)
	if err != nil {
		n.mu.Unlock()
		return err
	}
	n.agent = p
	n.mu.Unlock()
	n.c.log.Info("agent started", "node", n.Name, "pid", p.pid(), "log", n.LogPath)
	return n.waitAgentReady(ctx, p)
}

// waitAgentReady polls subnet.env and /readyz until both say ready.
func (n *Node) waitAgentReady(ctx context.Context, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var last error
	for {
		if p.exited() {
			return fmt.Errorf("%w: %s; log %s:\n%s", ErrAgentExited, p.exitStatus(), n.LogPath, tailFile(n.LogPath, 30))
		}
		env, err := readEnvFile(n.SubnetFile)
		if err == nil {
			var code int
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			_, code, err = n.HTTPGet(rctx, "/readyz")
			rcancel()
			if err == nil && code != 200 {
				err = fmt.Errorf("/readyz answered %d", code)
			}
			if err == nil {
				return n.noteReady(ctx, env)
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent not ready: %w (last: %v); log %s:\n%s", ctx.Err(), last, n.LogPath, tailFile(n.LogPath, 30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// noteReady records the subnet and MTU from subnet.env and the VtepMAC from
// the node's lease.
func (n *Node) noteReady(ctx context.Context, env map[string]string) error {
	readyAt := time.Now()
	sub, err := netip.ParsePrefix(env["FLANNEL_SUBNET"])
	if err != nil {
		return fmt.Errorf("subnet.env FLANNEL_SUBNET %q: %w", env["FLANNEL_SUBNET"], err)
	}
	mtu, err := strconv.Atoi(env["FLANNEL_MTU"])
	if err != nil {
		return fmt.Errorf("subnet.env FLANNEL_MTU %q: %w", env["FLANNEL_MTU"], err)
	}
	var l Lease
	if n.c.KubeMode() {
		l, err = n.c.kubeLease(ctx, n.Name)
		if err == nil && l.Subnet != sub.Masked() {
			err = fmt.Errorf("Node %s podCIDR %v, but subnet.env says %v", n.Name, l.Subnet, sub)
		}
	} else {
		l, err = n.c.Lease(ctx, sub.Masked())
	}
	if err != nil {
		return fmt.Errorf("lease of ready agent: %w", err)
	}
	if l.PublicIP != n.Underlay && !n.c.KubeMode() {
		return fmt.Errorf("lease %s has PublicIP %v, want %v", l.Key, l.PublicIP, n.Underlay)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.subnet.IsValid() && n.subnet != sub.Masked() && len(n.Pods) > 0 {
		n.c.log.Warn("node subnet changed; its pods keep the old addresses", "node", n.Name, "old", n.subnet, "new", sub.Masked())
	}
	n.env, n.subnet, n.mtu, n.vtepMAC, n.readyAt = env, sub.Masked(), mtu, l.VtepMAC, readyAt
	return nil
}

// Stop stops the node's datapath: SIGTERM to the agent (SIGKILL after
// 10 s), or the kernel emulation's lease watcher (the kernel state stays,
// as when flanneld stops). The agent's lease and subnet.env stay.
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	p, k := n.agent, n.kernel
	n.mu.Unlock()
	if k != nil {
		k.stop()
	}
	if p == nil {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- p.stop(10 * time.Second) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		<-done
		return ctx.Err()
	}
}

// Kill sends SIGKILL to the agent, as a crash would, and waits for it.
func (n *Node) Kill() {
	n.mu.Lock()
	p := n.agent
	n.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

// Restart stops and starts the node's datapath.
func (n *Node) Restart(ctx context.Context) error {
	if err := n.Stop(ctx); err != nil {
		return err
	}
	return n.Start(ctx)
}

// Running reports whether the node's agent process is alive (kernel nodes:
// whether the emulation runs).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.Kind == KernelFlannel {
		return n.kernel != nil && n.kernel.running()
	}
	return n.agent != nil && !n.agent.exited()
}

// shutdown stops everything the node runs, for Cluster.Close.
func (n *Node) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := n.Stop(ctx)
	n.mu.Lock()
	h := n.holder
	n.mu.Unlock()
	if h != nil {
		h.kill()
	}
	return err
}

// HTTPGet fetches a path from the agent's healthz endpoint inside the node
// namespace and returns the body and status code.
func (n *Node) HTTPGet(ctx context.Context, path string) ([]byte, int, error) {
	return httpGet(ctx, n.NS, "http://"+netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), HealthzPort).String()+path)
}

// Status fetches and decodes the agent's GET /status.
func (n *Node) Status(ctx context.Context) (AgentStatus, error) {
	var st AgentStatus
	body, code, err := n.HTTPGet(ctx, "/status")
	if err != nil {
		return st, err
	}
	if code != 200 {
		return st, fmt.Errorf("%s /status: HTTP %d: %s", n.Name, code, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("%s /status: %w", n.Name, err)
	}
	return st, nil
}

// Metrics fetches and parses the agent's /metrics.
func (n *Node) Metrics(ctx context.Context) (Metrics, error) {
	body, code, err := n.HTTPGet(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("%s /metrics: HTTP %d", n.Name, code)
	}
	return ParseMetrics(body)
}

// pods returns the node's pods while AddNode may still be adding them.
func (n *Node) pods() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Pod(nil), n.Pods...)
}

// LogTail returns the last lines of the agent's log.
func (n *Node) LogTail(lines int) string { return tailFile(n.LogPath, lines) }

// Pod is a pod namespace behind its node's cni0 bridge.
type Pod struct {
	Node *Node
	Name string // namespace name, <prefix>n<i>p<j>
	NS   NS
	Addr netip.Addr // <subnet>.(1+j)
}

func (p *Pod) String() string { return p.Name + "(" + p.Addr.String() + ")" }

// addPods builds the node's cni0 bridge and pods the way the CNI bridge
// plugin does from subnet.env: the bridge gets .1/24, pod j gets .(1+j)/24
// with MTU FLANNEL_MTU and a default route via .1.
func (n *Node) addPods(ctx context.Context) error {
	sub, mtu := n.Subnet(), n.MTU()
	gw := sub.Addr().Next()
	err := n.NS.netlink(func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cni0", MTU: mtu}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("add cni0: %w", err)
		}
		if err := h.AddrAdd(br, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(gw, sub.Bits()))}); err != nil {
			return fmt.Errorf("cni0 address: %w", err)
		}
		return h.LinkSetUp(br)
	})
	if err != nil {
		return err
	}
	addr := gw
	for j := 1; j <= n.opts.Pods; j++ {
		addr = addr.Next()
		name := fmt.Sprintf("%sp%d", n.Name, j)
		ns, err := addNS(ctx, name)
		if err != nil {
			return err
		}
		pod := &Pod{Node: n, Name: name, NS: ns, Addr: addr}
		n.mu.Lock()
		n.Pods = append(n.Pods, pod)
		n.mu.Unlock()
		if err := n.wirePod(pod, j, mtu, sub.Bits(), gw); err != nil {
			return fmt.Errorf("pod %s: %w", name, err)
		}
	}
	return nil
}

func (n *Node) wirePod(pod *Pod, j, mtu, bits int, gw netip.Addr) error {
	podNS, err := netns.GetFromName(string(pod.NS))
	if err != nil {
		return err
	}
	defer podNS.Close()
	hostSide := fmt.Sprintf("veth%d", j)
	err = n.NS.netlink(func(h *netlink.Handle) error {
		br, err := h.LinkByName("cni0")
		if err != nil {
			return err
		}
		v := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: hostSide, MTU: mtu, TxQLen: -1},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(podNS),
			PeerMTU:       uint32(mtu),
			PeerTxQLen:    -1,
		}
		if err := h.LinkAdd(v); err != nil {
			return fmt.Errorf("add veth %s: %w", hostSide, err)
		}
		if err := h.LinkSetMaster(v, br); err != nil {
			return err
		}
		return h.LinkSetUp(v)
	})
	if err != nil {
		return err
	}
	return pod.NS.netlink(func(h *netlink.Handle) error {
		eth, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := h.AddrAdd(eth, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(pod.Addr, bits))}); err != nil {
			return err
		}
		if err := h.LinkSetUp(eth); err != nil {
			return err
		}
		return h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw.AsSlice()})
	})
}

// readEnvFile parses a KEY=VALUE file such as subnet.env.
func readEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s: line %q is not KEY=VALUE", path, line)
		}
		env[k] = v
	}
	if env["FLANNEL_SUBNET"] == "" {
		return nil, fmt.Errorf("%s: no FLANNEL_SUBNET", path)
	}
	return env, nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
