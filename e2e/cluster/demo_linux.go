package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"overlay/e2e/kubeapi"
)

// DefaultDemoPrefix names the demo's namespaces.
const DefaultDemoPrefix = "ovl-demo-"

// demoIperfPort is the iperf3 port inside the demo's pods.
const demoIperfPort = 5201

// Demo builds a cluster of opts.Nodes overlay nodes in network namespaces
// (etcd run by `overlay etcd`, the network config written, every agent
// started), prints the leases as etcdctl would, pings every pod pair, runs
// a short throughput check between pods on two nodes (iperf3 if installed,
// else an in-process TCP transfer), prints a summary, and tears everything
// down, also when ctx is cancelled (Ctrl-C). Progress goes to w, one line
// per step. It needs root.
func Demo(ctx context.Context, w io.Writer, opts DemoOptions) error {
	return runDemo(ctx, w, opts, Agent)
}

// runDemo is Demo with the nodes' kind as a parameter, so the harness's own
// tests can run the whole demo on emulated kernel flannel nodes.
func runDemo(ctx context.Context, w io.Writer, opts DemoOptions, kind NodeKind) (err error) {
	if opts.Binary == "" {
		return errors.New("demo: no overlay binary (it runs etcd and the agents)")
	}
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Nodes < 2 || opts.Nodes > 9 {
		return fmt.Errorf("demo: %d nodes: want 2 to 9", opts.Nodes)
	}
	if opts.Throughput == 0 {
		opts.Throughput = 3 * time.Second
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultDemoPrefix
	}
	if os.Geteuid() != 0 {
		return errors.New("demo: needs root for network namespaces, veth and TUN devices; run `sudo make demo` or `sudo overlay demo`")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("demo: needs iproute2's `ip` (apt-get install iproute2)")
	}
	if _, err := exec.LookPath("ping"); err != nil {
		return errors.New("demo: needs ping (apt-get install iputils-ping)")
	}

	d := &demo{ctx: ctx, w: w, opts: opts, start: time.Now()}
	mode := ""
	if opts.Kube {
		mode = ", kube subnet manager on a real kube-apiserver"
	}
	d.printf("overlay demo: %d nodes in network namespaces (%s*), userspace VXLAN over a %d-byte underlay%s\n\n", opts.Nodes, opts.Prefix, UnderlayMTU, mode)

	// Leftovers of a killed demo would collide with our names.
	if err := d.step("clean up leftovers of an earlier demo", func() (string, error) {
		gone, err := CleanupStale(context.WithoutCancel(ctx), opts.Prefix)
		if len(gone) == 0 {
			return "none found", err
		}
		return fmt.Sprintf("removed %d namespaces", len(gone)), err
	}); err != nil {
		return err
	}

	dir := opts.WorkDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", opts.Prefix); err != nil {
			return err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(dir, "harness.log"))
	if err != nil {
		return err
	}

	var kube *KubeOptions
	if opts.Kube {
		kube = &KubeOptions{APIServerBinary: opts.APIServerBinary}
		if kube.APIServerBinary == "" {
			if err := d.step("kube-apiserver (k8s.io/kubernetes v1.37.2, e2e/kube)", func() (string, error) {
				bin, err := kubeapi.Build(ctx, "")
				kube.APIServerBinary = bin
				return bin, err
			}); err != nil {
				logf.Close()
				return err
			}
		}
	}

	var c *Cluster
	defer func() {
		if c != nil {
			what := "tear down agents, etcd and namespaces"
			if opts.Kube {
				what = "tear down agents, apiserver, etcd and namespaces"
			}
			terr := d.step(what, func() (string, error) {
				return "", c.Close()
			})
			err = errors.Join(err, terr)
		}
		logf.Close()
		switch {
		case ctx.Err() != nil:
			err = fmt.Errorf("demo interrupted: %w", ctx.Err())
		case err == nil:
			d.printf("\n all checks passed in %s\n", fmtDuration(time.Since(d.start).Round(100*time.Millisecond)))
		}
		switch {
		case (err == nil || ctx.Err() != nil) && opts.WorkDir == "":
			os.RemoveAll(dir)
		case err != nil:
			d.printf("\n logs kept in %s (harness.log, etcd.log, <node>.log)\n", dir)
		}
	}()

	what := "underlay " + netip.PrefixFrom(HubIP, Underlay.Bits()).String() + " on " + opts.Prefix + "br, etcd"
	if opts.Kube {
		what += ", kube-apiserver"
	}
	err = d.step(what, func() (string, error) {
		var err error
		c, err = New(ctx, Options{
			Prefix:     opts.Prefix,
			Binary:     opts.Binary,
			EtcdBinary: opts.EtcdBinary,
			WorkDir:    dir,
			AgentArgs:  append([]string{"--log-level=info"}, opts.AgentArgs...),
			Log:        slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Kube:       kube,
		})
		if err != nil {
			return "", err
		}
		detail := strings.Join(c.EtcdServer(), " ") + " on " + EtcdEndpoint()
		if s := c.APIServer(); s != nil {
			detail += "; kube-apiserver on " + s.URL()
		}
		return detail, nil
	})
	if err != nil {
		return err
	}
	if opts.Kube {
		err = d.step("net-conf.json for --net-config-path", func() (string, error) {
			b, err := os.ReadFile(c.NetConfPath())
			return strings.TrimSpace(string(b)), err
		})
	} else {
		err = d.step("network config "+c.EtcdPrefix()+"/config", func() (string, error) {
			resp, err := c.Etcd().Get(ctx, c.EtcdPrefix()+"/config")
			if err != nil || len(resp.Kvs) == 0 {
				return "", fmt.Errorf("read back the network config: %v", err)
			}
			return string(resp.Kvs[0].Value), nil
		})
	}
	if err != nil {
		return err
	}
	for i := 1; i <= opts.Nodes; i++ {
		what := fmt.Sprintf("node %sn%d: overlay up", opts.Prefix, i)
		if opts.Kube {
			what = fmt.Sprintf("node %sn%d: Node + overlay up --kube-subnet-mgr", opts.Prefix, i)
		}
		if kind == KernelFlannel {
			what = fmt.Sprintf("node %sn%d: kernel flannel.1", opts.Prefix, i)
		}
		err := d.step(what, func() (string, error) {
			n, err := c.AddNode(ctx, NodeOptions{Kind: kind})
			if err != nil {
				return "", err
			}
			pods := make([]string, len(n.Pods))
			for j, p := range n.Pods {
				pods[j] = p.Addr.String()
			}
			return fmt.Sprintf("subnet %v, pods %s", n.Subnet(), strings.Join(pods, " ")), nil
		})
		if err != nil {
			return err
		}
	}

	if opts.Kube {
		err = d.printNodes(ctx, c)
	} else {
		err = d.printLeases(ctx, c)
	}
	if err != nil {
		return err
	}

	var pings pingMatrix
	if err := d.step("ping every pod pair", func() (string, error) {
		var err error
		pings, err = pingEveryPair(ctx, c)
		return pings.summary(), err
	}); err != nil {
		return err
	}

	var tput throughput
	nodes := c.Nodes()
	src, dst := nodes[0].Pods[0], nodes[1].Pods[0]
	if err := d.step(fmt.Sprintf("throughput %s -> %s", src.Name, dst.Name), func() (string, error) {
		var err error
		tput, err = measureThroughput(ctx, src, dst, opts.Throughput)
		return tput.String(), err
	}); err != nil {
		return err
	}

	d.printSummary(ctx, c, pings, tput)
	return nil
}

// demo prints the demo's progress.
type demo struct {
	ctx   context.Context // cancelled on Ctrl-C
	w     io.Writer
	opts  DemoOptions
	start time.Time
}

func (d *demo) printf(format string, args ...any) { fmt.Fprintf(d.w, format, args...) }

// step runs one step and prints a line with a check mark (or a cross),
// what it did and how long it took.
func (d *demo) step(what string, fn func() (string, error)) error {
	t := time.Now()
	detail, err := fn()
	el := time.Since(t).Round(10 * time.Millisecond)
	if err != nil && d.ctx.Err() != nil && !strings.HasPrefix(what, "tear down") {
		// Interrupted: the step's own errors are only echoes of that.
		d.printf(" ✗ %-52s %6s  interrupted\n", what, fmtDuration(el))
		return fmt.Errorf("%s: %w", what, d.ctx.Err())
	}
	mark := "✓"
	if err != nil {
		mark = "✗"
	}
	line := fmt.Sprintf(" %s %-52s %6s", mark, what, fmtDuration(el))
	if detail != "" {
		line += "  " + detail
	}
	d.printf("%s\n", line)
	if err != nil {
		d.printf("   %s\n", strings.ReplaceAll(err.Error(), "\n", "\n   "))
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func fmtDuration(d time.Duration) string {
	if d < time.Second {
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
}

// printLeases prints the subnet leases like `etcdctl get --prefix`: key,
// then value, then the etcd lease's remaining TTL.
func (d *demo) printLeases(ctx context.Context, c *Cluster) error {
	resp, err := c.Etcd().Get(ctx, c.EtcdPrefix()+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list leases: %w", err)
	}
	d.printf("\n $ etcdctl get --prefix %s/subnets/\n", c.EtcdPrefix())
	for _, kv := range resp.Kvs {
		ttl := "no TTL (reservation)"
		if kv.Lease != 0 {
			if t, err := c.Etcd().TimeToLive(ctx, clientv3.LeaseID(kv.Lease)); err == nil {
				ttl = fmt.Sprintf("etcd lease %x, TTL %s left", kv.Lease, time.Duration(t.TTL)*time.Second)
			}
		}
		d.printf("   %s\n   %s\n     (%s)\n", kv.Key, kv.Value, ttl)
	}
	d.printf("\n")
	return nil
}

// printNodes prints the Nodes' pod CIDRs and flannel annotations, as
// `kubectl get nodes` and `kubectl describe node` would show them.
func (d *demo) printNodes(ctx context.Context, c *Cluster) error {
	list, err := c.Kube().ListNodes(ctx)
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	d.printf("\n $ kubectl get nodes -o custom-columns=NAME:.metadata.name,PODCIDR:.spec.podCIDR  # and their %s/* annotations\n", c.AnnotationPrefix())
	for _, n := range list.Items {
		d.printf("   %-14s %s\n", n.Name, n.Spec.PodCIDR)
		var keys []string
		for k := range n.Annotations {
			if strings.HasPrefix(k, c.AnnotationPrefix()+"/") {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			d.printf("     %s=%s\n", k, n.Annotations[k])
		}
	}
	d.printf("\n")
	return nil
}

// pingMatrix holds the ping results between every ordered pair of pods.
type pingMatrix struct {
	pods    []*Pod
	results map[[2]int]PingResult // [src index, dst index]
}

func pingEveryPair(ctx context.Context, c *Cluster) (pingMatrix, error) {
	m := pingMatrix{pods: c.Pods(), results: map[[2]int]PingResult{}}
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i, s := range m.pods {
		for j, dst := range m.pods {
			if i == j {
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				// The first round may still race the last agent's peers;
				// retry a few times before calling a pair broken.
				var r PingResult
				var err error
				for try := 0; try < 5; try++ {
					r, err = s.Ping(ctx, dst.Addr, PingOptions{Count: 3, Interval: 100 * time.Millisecond, Wait: time.Second})
					if (err == nil && r.OK()) || ctx.Err() != nil {
						break
					}
				}
				if err == nil && !r.OK() {
					err = fmt.Errorf("%s -> %s: %d of %d replies", s, dst, r.Received, r.Transmitted)
				}
				mu.Lock()
				defer mu.Unlock()
				m.results[[2]int{i, j}] = r
				if err != nil {
					errs = append(errs, err)
				}
			}()
		}
	}
	wg.Wait()
	return m, errors.Join(errs...)
}

func (m pingMatrix) summary() string {
	ok, n := 0, 0
	var sum time.Duration
	for _, r := range m.results {
		n++
		if r.OK() {
			ok++
			sum += r.RTTAvg
		}
	}
	if ok == 0 {
		return fmt.Sprintf("%d of %d pairs answered", ok, n)
	}
	return fmt.Sprintf("%d of %d pairs answered, mean RTT %.3f ms", ok, n, float64(sum/time.Duration(ok))/1e6)
}

// cell summarises the pings from the pods of node a to the pods of node b.
func (m pingMatrix) cell(a, b *Node) string {
	ok, n := 0, 0
	var sum time.Duration
	for k, r := range m.results {
		if m.pods[k[0]].Node != a || m.pods[k[1]].Node != b {
			continue
		}
		n++
		if r.OK() {
			ok++
			sum += r.RTTAvg
		}
	}
	switch {
	case n == 0:
		return "-"
	case ok < n:
		return fmt.Sprintf("FAIL %d/%d", ok, n)
	}
	return fmt.Sprintf("ok %.3f ms", float64(sum/time.Duration(ok))/1e6)
}

// throughput is the result of the demo's throughput check.
type throughput struct {
	tool        string
	bitsPerSec  float64
	duration    time.Duration
	retransmits int
}

func (t throughput) String() string {
	if t.tool == "" {
		return ""
	}
	s := fmt.Sprintf("%s over %s: %s", t.tool, fmtDuration(t.duration), fmtBits(t.bitsPerSec))
	if t.tool == "iperf3" {
		s += fmt.Sprintf(" (%d retransmits)", t.retransmits)
	}
	return s
}

func fmtBits(bps float64) string {
	switch {
	case bps >= 1e9:
		return fmt.Sprintf("%.2f Gbit/s", bps/1e9)
	case bps >= 1e6:
		return fmt.Sprintf("%.0f Mbit/s", bps/1e6)
	}
	return fmt.Sprintf("%.0f kbit/s", bps/1e3)
}

// measureThroughput runs iperf3 between the pods when it is installed, else
// an in-process TCP transfer with a checksum.
func measureThroughput(ctx context.Context, src, dst *Pod, d time.Duration) (throughput, error) {
	if _, err := exec.LookPath("iperf3"); err == nil {
		return iperf3(ctx, src, dst, d)
	}
	r, err := Transfer(ctx, src, dst, 1<<40, TransferOptions{Duration: d})
	if err != nil {
		return throughput{}, err
	}
	return throughput{tool: "Go TCP transfer (sha256 verified)", bitsPerSec: r.Mbps() * 1e6, duration: r.Duration}, nil
}

// iperfResult is the part of `iperf3 -J` output the demo reads.
type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumSent struct {
			Retransmits int `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			Seconds       float64 `json:"seconds"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// iperf3 runs a one-off iperf3 server in dst and a client in src.
func iperf3(ctx context.Context, src, dst *Pod, d time.Duration) (throughput, error) {
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	port := strconv.Itoa(demoIperfPort)
	var serverOut bytes.Buffer
	srv := dst.NS.Command(ctx, "iperf3", "-s", "-1", "-B", dst.Addr.String(), "-p", port)
	srv.Stdout, srv.Stderr = &serverOut, &serverOut
	if err := srv.Start(); err != nil {
		return throughput{}, fmt.Errorf("start iperf3 server in %s: %w", dst.Name, err)
	}
	defer func() {
		cancel()
		_ = srv.Wait()
	}()
	secs := strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second)))
	var res iperfResult
	var err error
	// The server needs a moment to listen; a refused connection is retried.
	for try := 0; try < 50; try++ {
		var out []byte
		out, err = src.NS.Command(ctx, "iperf3", "-c", dst.Addr.String(), "-p", port, "-t", secs, "-J").Output()
		res = iperfResult{}
		if jerr := json.Unmarshal(out, &res); jerr != nil {
			return throughput{}, fmt.Errorf("iperf3 client in %s: %v: %s %s", src.Name, err, bytes.TrimSpace(out), bytes.TrimSpace(serverOut.Bytes()))
		}
		if !strings.Contains(res.Error, "refused") || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if res.Error != "" {
		return throughput{}, fmt.Errorf("iperf3 client in %s: %s", src.Name, res.Error)
	}
	if err != nil {
		return throughput{}, fmt.Errorf("iperf3 client in %s: %w", src.Name, err)
	}
	return throughput{
		tool:        "iperf3",
		bitsPerSec:  res.End.SumReceived.BitsPerSecond,
		duration:    time.Duration(res.End.SumReceived.Seconds * float64(time.Second)),
		retransmits: res.End.SumSent.Retransmits,
	}, nil
}

// printSummary prints the nodes, the ping matrix and the throughput as
// small tables.
func (d *demo) printSummary(ctx context.Context, c *Cluster, pings pingMatrix, tput throughput) {
	nodes := c.Nodes()
	d.printf("\n")
	tw := tabwriter.NewWriter(d.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, " NODE\tUNDERLAY\tSUBNET\tVTEP MAC\tTUN\tPEERS\tPODS")
	for _, n := range nodes {
		tun, peers := n.TUNName(), "?"
		if st, err := n.Status(ctx); err == nil {
			tun = fmt.Sprintf("%s (%s, mtu %d)", st.TUN, st.TUNMode, st.MTU)
			peers = strconv.Itoa(len(st.Peers))
		}
		pods := make([]string, len(n.Pods))
		for j, p := range n.Pods {
			pods[j] = p.Addr.String()
		}
		fmt.Fprintf(tw, " %s\t%v\t%v\t%v\t%s\t%s\t%s\n", n.Name, n.Underlay, n.Subnet(), n.VtepMAC(), tun, peers, strings.Join(pods, " "))
	}
	tw.Flush()

	d.printf("\n")
	tw = tabwriter.NewWriter(d.w, 0, 0, 2, ' ', 0)
	hdr := " PING (pods of -> pods of)"
	for _, n := range nodes {
		hdr += "\t" + n.Name
	}
	fmt.Fprintln(tw, hdr)
	for _, a := range nodes {
		row := " " + a.Name
		for _, b := range nodes {
			row += "\t" + pings.cell(a, b)
		}
		fmt.Fprintln(tw, row)
	}
	tw.Flush()

	d.printf("\n THROUGHPUT  %s -> %s  %s\n\n", nodes[0].Pods[0], nodes[1].Pods[0], tput)
}
