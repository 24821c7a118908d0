package suite

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// etcd layout (DESIGN.md): the default prefix, its config key and the
// subnet lease directory.
const (
	etcdPrefix    = "/coreos.com/network"
	etcdConfigKey = etcdPrefix + "/config"
	etcdSubnets   = etcdPrefix + "/subnets/"
	etcdPort      = 2379
	healthzPort   = 18080 // per node namespace, so both nodes can use it

	agentReadyTimeout = 60 * time.Second
	peerReachTimeout  = 30 * time.Second
)

// networkConfig is the flannel network config the agent paths use. Only
// the two subnets of the kernel path can be handed out, so every path
// carries traffic between the same addresses.
func networkConfig() string {
	cfg := map[string]any{
		"Network":   clusterNetwork,
		"SubnetLen": 24,
		"SubnetMin": nodes[0].subnet.Addr().String(),
		"SubnetMax": nodes[1].subnet.Addr().String(),
		"Backend":   map[string]any{"Type": "vxlan"},
	}
	b, _ := json.Marshal(cfg)
	return string(b)
}

// hasCommand reports whether the overlay binary at bin has the subcommand
// cmd (`bin cmd --help` succeeds; urfave/cli exits 3 for an unknown one).
func hasCommand(ctx context.Context, bin, cmd string) bool {
	_, err := runTool(ctx, "", 10*time.Second, bin, cmd, "--help")
	return err == nil
}

// etcdServer is the single-member etcd of the agent paths, running in node
// a's namespace on its underlay address so both agents reach it.
type etcdServer struct {
	proc     *process
	endpoint string
	client   *clientv3.Client
	desc     string // what runs, for the report
}

// startEtcd starts etcd, stores the network config and registers its
// teardown on undo.
func startEtcd(ctx context.Context, cfg Config, work string, undo *undoStack) (*etcdServer, error) {
	a := nodes[0]
	endpoint := "http://" + netip.AddrPortFrom(a.underlay.Addr(), etcdPort).String()
	argv := []string{cfg.OverlayBin, "etcd"}
	if cfg.EtcdBin != "" {
		argv = []string{cfg.EtcdBin}
	}
	desc := strings.Join(argv, " ")
	// The member name "default" matches etcd's default --initial-cluster,
	// so an etcd server passed with --etcd needs no more flags than
	// `overlay etcd` takes.
	argv = append(argv, "--name", "default", "--data-dir", filepath.Join(work, "etcd"),
		"--listen-client-urls", endpoint, "--advertise-client-urls", endpoint)
	proc, err := startProcess("etcd", a.ns, filepath.Join(work, "etcd.log"), argv...)
	if err != nil {
		return nil, err
	}
	undo.push("stop etcd", proc.stop)
	cl, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dialInNetns(ctx, a.ns, "tcp", addr)
		})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	undo.push("close etcd client", cl.Close)
	e := &etcdServer{proc: proc, endpoint: endpoint, client: cl, desc: desc}

	deadline := time.Now().Add(30 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := cl.Put(pctx, etcdConfigKey, networkConfig())
		cancel()
		if err == nil {
			return e, nil
		}
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case proc.exited():
			return nil, proc.exitError()
		case time.Now().After(deadline):
			return nil, fmt.Errorf("etcd at %s not ready after 30s: %w; last log lines:\n%s", endpoint, err, proc.logTail(10))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// clearLeases deletes every subnet lease, so each agent path starts from
// an empty lease table.
func (e *etcdServer) clearLeases(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := e.client.Delete(ctx, etcdSubnets, clientv3.WithPrefix()); err != nil {
		return fmt.Errorf("clear leases: %w", err)
	}
	return nil
}

// startAgents runs `overlay up --backend=userspace` in both nodes, waits
// until both are ready and reach each other over the overlay, and returns
// the nodes as the agents configured them (subnets from subnet.env). The
// agents' teardown is registered on undo.
func startAgents(ctx context.Context, cfg Config, e *etcdServer, path PathID, work string, undo *undoStack) ([2]node, []*process, error) {
	got := nodes
	if err := e.clearLeases(ctx); err != nil {
		return got, nil, err
	}
	bin, mode, naive := cfg.OverlayBin, "default", false
	switch path {
	case OverlayNaive:
		mode, naive = "naive", true
	case OverlayB:
		bin, mode = cfg.OverlayBinB, "b"
	}
	procs := make([]*process, 0, len(nodes))
	files := make([]string, 0, len(nodes))
	for _, n := range nodes {
		dir := filepath.Join(work, mode+"-"+n.ns)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return got, nil, err
		}
		// Seed subnet.env as a restarted flannel node would find it: the
		// agent reclaims FLANNEL_SUBNET, so node a gets 10.244.1.0/24 and
		// node b 10.244.2.0/24 as on the kernel path.
		subnetFile := filepath.Join(dir, "subnet.env")
		seed := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s/%d\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=false\n",
			clusterNetwork, n.subnet.Addr().Next(), n.subnet.Bits(), overlayMTU)
		if err := os.WriteFile(subnetFile, []byte(seed), 0o644); err != nil {
			return got, nil, err
		}
		argv := []string{bin, "up", "--backend=userspace",
			"--etcd-endpoints=" + e.endpoint,
			"--iface=" + n.veth,
			"--public-ip=" + n.underlay.Addr().String(),
			"--subnet-file=" + subnetFile,
			"--healthz-ip=127.0.0.1",
			"--healthz-port=" + strconv.Itoa(healthzPort),
			"--tun-name=" + tunName,
			"--log-format", "text",
		}
		switch {
		case naive:
			argv = append(argv, "--naive")
		case path == OverlayB:
			argv = append(argv, cfg.OverlayArgsB...)
		default:
			if cfg.TUNDriver != "" {
				argv = append(argv, "--tun-driver="+cfg.TUNDriver)
			}
			argv = append(argv, cfg.OverlayArgs...)
		}
		p, err := startProcess("overlay agent ("+mode+", "+n.ns+")", n.ns, filepath.Join(dir, "agent.log"), argv...)
		if err != nil {
			return got, nil, err
		}
		undo.push("stop "+p.name, p.stop)
		procs = append(procs, p)
		files = append(files, subnetFile)
	}
	for i, p := range procs {
		if err := waitReady(ctx, nodes[i].ns, p); err != nil {
			return got, nil, err
		}
		b, err := os.ReadFile(files[i])
		if err != nil {
			return got, nil, err
		}
		s, err := parseSubnetEnv(b)
		if err != nil {
			return got, nil, fmt.Errorf("%s: %w", files[i], err)
		}
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return got, nil, fmt.Errorf("%s: FLANNEL_SUBNET: %w", files[i], err)
		}
		got[i].subnet = pfx.Masked()
	}
	for i := range got {
		if err := waitPing(ctx, got[i].ns, got[1-i].vtep(), peerReachTimeout); err != nil {
			return got, nil, fmt.Errorf("overlay (%s) does not carry traffic: %w; agent log:\n%s", mode, err, procs[i].logTail(15))
		}
	}
	return got, procs, nil
}

// waitReady polls the agent's /readyz until it answers 200.
func waitReady(ctx context.Context, ns string, p *process) error {
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", healthzPort)
	deadline := time.Now().Add(agentReadyTimeout)
	var last string
	for {
		if p.exited() {
			return p.exitError()
		}
		code, body, err := httpGetInNetns(ctx, ns, url)
		if err == nil && code == http.StatusOK {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("%d %s", code, strings.TrimSpace(string(body)))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v (last /readyz: %s); last log lines:\n%s", p.name, agentReadyTimeout, last, p.logTail(15))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}
