package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/clientcmd"

	"overlay/deploy"
	"overlay/e2e/kubeapi"
)

// Kube mode: the cluster's etcd stores a real kube-apiserver's objects,
// not flannel leases. The harness plays the controller-manager (it creates
// one Node per node namespace with spec.podCIDR(s) set), agents run
// `overlay up --kube-subnet-mgr` with the ServiceAccount token and RBAC of
// deploy/kube-overlay.yml, and kernel nodes emulate flanneld
// --kube-subnet-mgr: the same kernel VXLAN programming as in etcd mode,
// peers from a Node watch, and flanneld's own annotations on their Node.

// startKube starts the apiserver in the hub namespace over the cluster's
// etcd, writes net-conf.json, applies the manifest's RBAC and writes the
// agents' kubeconfig.
func (c *Cluster) startKube(ctx context.Context) error {
	ko := c.opts.Kube
	if ko.APIServerBinary == "" {
		return errors.New("cluster: Kube.APIServerBinary is required (kubeapi.Build makes one)")
	}
	c.annotationPrefix = ko.AnnotationPrefix
	if c.annotationPrefix == "" {
		c.annotationPrefix = DefaultAnnotationPrefix
	}
	cfg := c.networkConfig()
	if cfg == "" {
		return errors.New("cluster: kube mode needs a network config for net-conf.json")
	}
	if err := os.WriteFile(c.NetConfPath(), []byte(cfg), 0o644); err != nil {
		return err
	}
	srv, err := kubeapi.Start(ctx, kubeapi.Options{
		Binary:      ko.APIServerBinary,
		EtcdURL:     EtcdEndpoint(),
		Dir:         filepath.Join(c.opts.WorkDir, "apiserver"),
		Addr:        HubIP,
		Port:        KubeAPIPort,
		Command:     c.hub.Command,
		DialContext: c.hub.DialContext,
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.apiserver = srv
	c.mu.Unlock()
	c.log.Info("kube-apiserver started", "url", srv.URL(), "pid", srv.PID(), "log", srv.LogPath())

	rc, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig())
	if err != nil {
		return fmt.Errorf("admin kubeconfig: %w", err)
	}
	rc.Dial = c.hub.DialContext
	rc.Timeout = 10 * time.Second
	if c.kube, err = newKubeClient(rc); err != nil {
		return err
	}
	return c.writeAgentKubeconfig(ctx, srv)
}

// writeAgentKubeconfig creates the manifest's Namespace, ServiceAccount,
// ClusterRole and ClusterRoleBinding and writes a kubeconfig with a token
// of that ServiceAccount, so agents run with exactly the manifest's
// permissions.
func (c *Cluster) writeAgentKubeconfig(ctx context.Context, srv *kubeapi.Server) error {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(deploy.KubeOverlay)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("deploy manifest: %w", err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, err := c.kube.decode(doc)
		if err != nil {
			continue // kinds the harness does not apply (ConfigMap, DaemonSet)
		}
		if _, ok := obj.(*corev1.ConfigMap); ok {
			continue
		}
		if err := c.kube.create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("apply deploy manifest RBAC: %w", err)
		}
	}
	token, err := c.kube.token(ctx, deploy.Namespace, deploy.ServiceAccount, 24*3600)
	if err != nil {
		return fmt.Errorf("token for ServiceAccount %s/%s: %w", deploy.Namespace, deploy.ServiceAccount, err)
	}
	ca, err := os.ReadFile(srv.CAFile())
	if err != nil {
		return err
	}
	kc := clientcmdConfig(srv.URL(), ca, token)
	return os.WriteFile(c.AgentKubeconfig(), kc, 0o600)
}

func clientcmdConfig(server string, ca []byte, token string) []byte {
	type named struct {
		Name    string         `json:"name"`
		Cluster map[string]any `json:"cluster,omitempty"`
		User    map[string]any `json:"user,omitempty"`
		Context map[string]any `json:"context,omitempty"`
	}
	b, _ := json.MarshalIndent(map[string]any{
		"apiVersion":      "v1",
		"kind":            "Config",
		"clusters":        []named{{Name: "e2e", Cluster: map[string]any{"server": server, "certificate-authority-data": ca}}},
		"users":           []named{{Name: "overlay", User: map[string]any{"token": token}}},
		"contexts":        []named{{Name: "e2e", Context: map[string]any{"cluster": "e2e", "user": "overlay"}}},
		"current-context": "e2e",
	}, "", "  ")
	return b
}

// KubeMode reports whether the cluster runs on a kube-apiserver.
func (c *Cluster) KubeMode() bool { return c.opts.Kube != nil }

// Kube is the harness's admin client of the cluster's apiserver (nil in
// etcd mode); its connections are made from inside the hub namespace.
func (c *Cluster) Kube() *KubeClient { return c.kube }

// APIServer is the cluster's kube-apiserver (nil in etcd mode).
func (c *Cluster) APIServer() *kubeapi.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.apiserver
}

// AnnotationPrefix is the flannel annotation prefix of a kube-mode cluster.
func (c *Cluster) AnnotationPrefix() string { return c.annotationPrefix }

// NetConfPath is the net-conf.json every kube-mode agent reads.
func (c *Cluster) NetConfPath() string { return filepath.Join(c.opts.WorkDir, "net-conf.json") }

// AgentKubeconfig is the kubeconfig (ServiceAccount token) agents use.
func (c *Cluster) AgentKubeconfig() string { return filepath.Join(c.opts.WorkDir, "agent.kubeconfig") }

// annotation is the full annotation key for name under the prefix.
func (c *Cluster) annotation(name string) string { return c.annotationPrefix + "/" + name }

// PodCIDR is the pod CIDR the harness gives node i, as a controller-manager
// with --allocate-node-cidrs would: the i-th /24 of the network (the
// first, .0.0/24, is never handed out, as flannel never hands it out).
func (c *Cluster) PodCIDR(i int) (netip.Prefix, error) {
	subs, err := configSubnets([]byte(c.networkConfig()))
	if err != nil {
		return netip.Prefix{}, err
	}
	if i < 1 || i > len(subs) {
		return netip.Prefix{}, fmt.Errorf("node %d: the network has %d subnets", i, len(subs))
	}
	return subs[i-1], nil
}

// registerNode creates the node's Node object with its pod CIDR.
func (c *Cluster) registerNode(ctx context.Context, n *Node) error {
	cidr, err := c.PodCIDR(n.Index)
	if err != nil {
		return err
	}
	err = c.kube.CreateNode(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:   n.Name,
			Labels: map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/hostname": n.Name},
			// A registered kubelet's Node always has annotations; flanneld
			// v0.28.10 panics on a Node without any (it writes into the
			// nil map), so the harness's Nodes carry the one the node
			// controller sets.
			Annotations: map[string]string{"node.alpha.kubernetes.io/ttl": "0"},
		},
		Spec: corev1.NodeSpec{PodCIDR: cidr.String(), PodCIDRs: []string{cidr.String()}},
	})
	if err != nil {
		return fmt.Errorf("create Node %s: %w", n.Name, err)
	}
	return nil
}

// DeleteNodeObject deletes the node's Node object, as `kubectl delete
// node` does; the node's namespaces and datapath stay.
func (c *Cluster) DeleteNodeObject(ctx context.Context, n *Node) error {
	return c.kube.DeleteNode(ctx, n.Name)
}

// SetNodeAnnotation sets (value != "") or removes (value == "") one
// annotation, by its name below the cluster's prefix, on a node's Node.
func (c *Cluster) SetNodeAnnotation(ctx context.Context, n *Node, name, value string) error {
	var v any = value
	if value == "" {
		v = nil
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{c.annotation(name): v}}})
	return c.kube.PatchNode(ctx, n.Name, "", patch)
}

// NodeObject fetches the node's Node.
func (c *Cluster) NodeObject(ctx context.Context, n *Node) (*corev1.Node, error) {
	return c.kube.GetNode(ctx, n.Name)
}

// StopAPIServer stops the apiserver (SIGTERM); RestartAPIServer starts it
// again on the same address, port and certificates.
func (c *Cluster) StopAPIServer() error {
	if s := c.APIServer(); s != nil {
		return s.Stop()
	}
	return nil
}

// KillAPIServer ends the apiserver with SIGKILL, as a crash would.
func (c *Cluster) KillAPIServer() {
	if s := c.APIServer(); s != nil {
		s.Kill()
	}
}

// RestartAPIServer starts a stopped apiserver and waits for /readyz.
func (c *Cluster) RestartAPIServer(ctx context.Context) error {
	s := c.APIServer()
	if s == nil {
		return errors.New("cluster: not in kube mode")
	}
	return s.Restart(ctx)
}

// kubeAgentArgs replace the etcd flags of `overlay up` in kube mode.
func (c *Cluster) kubeAgentArgs() []string {
	return []string{
		"--kube-subnet-mgr",
		"--kubeconfig-file=" + c.AgentKubeconfig(),
		"--net-config-path=" + c.NetConfPath(),
		"--kube-annotation-prefix=" + c.annotationPrefix,
	}
}

// kubeLease reads what a node publishes on its Node: the subnet from
// spec.podCIDR and PublicIP and VtepMAC from flannel's annotations.
func (c *Cluster) kubeLease(ctx context.Context, name string) (Lease, error) {
	node, err := c.kube.GetNode(ctx, name)
	if err != nil {
		return Lease{}, err
	}
	return c.nodeLease(node)
}

// backendData is flannel's vxlan backend-data annotation.
type backendData struct {
	VNI     int    `json:"VNI"`
	VtepMAC string `json:"VtepMAC"`
}

// nodeLease is what flanneld's kube subnet manager makes of a Node: a
// lease for spec.podCIDR at public-ip-overwrite (else public-ip) with the
// backend-data's VtepMAC. It fails for a Node flannel does not manage.
func (c *Cluster) nodeLease(node *corev1.Node) (Lease, error) {
	a := node.Annotations
	var l Lease
	if a[c.annotation("kube-subnet-manager")] != "true" {
		return l, fmt.Errorf("Node %s: not managed by a kube subnet manager yet", node.Name)
	}
	sub, err := netip.ParsePrefix(node.Spec.PodCIDR)
	if err != nil {
		return l, fmt.Errorf("Node %s podCIDR %q: %w", node.Name, node.Spec.PodCIDR, err)
	}
	l.Subnet, l.BackendType, l.Key = sub.Masked(), a[c.annotation("backend-type")], node.Name
	ip := a[c.annotation("public-ip-overwrite")]
	if ip == "" {
		ip = a[c.annotation("public-ip")]
	}
	if l.PublicIP, err = netip.ParseAddr(ip); err != nil {
		return l, fmt.Errorf("Node %s public IP %q: %w", node.Name, ip, err)
	}
	var bd backendData
	if err := json.Unmarshal([]byte(a[c.annotation("backend-data")]), &bd); err != nil {
		return l, fmt.Errorf("Node %s backend-data: %w", node.Name, err)
	}
	if l.VtepMAC, err = net.ParseMAC(bd.VtepMAC); err != nil {
		return l, fmt.Errorf("Node %s VtepMAC: %w", node.Name, err)
	}
	l.VNI = bd.VNI
	return l, nil
}

// FlannelAnnotations are the annotations flanneld --kube-subnet-mgr
// publishes for a vxlan node with IPv4 only, byte for byte.
func FlannelAnnotations(prefix string, publicIP netip.Addr, vni int, mac net.HardwareAddr) map[string]string {
	// flanneld marshals its vxlan lease attributes struct {VNI uint16;
	// VtepMAC hardwareAddr} with encoding/json: fields in that order, the
	// MAC in net.HardwareAddr's lowercase colon form.
	bd, _ := json.Marshal(backendData{VNI: vni, VtepMAC: mac.String()})
	return map[string]string{
		prefix + "/backend-data":        string(bd),
		prefix + "/backend-type":        "vxlan",
		prefix + "/kube-subnet-manager": "true",
		prefix + "/public-ip":           publicIP.String(),
	}
}

// kubeAcquire is the kernel node's flanneld emulation of AcquireLease: the
// subnet is the Node's podCIDR, and the annotations are patched onto the
// Node through nodes/status, as flanneld does.
func (k *kernelNode) kubeAcquire(ctx context.Context) error {
	c := k.n.c
	node, err := c.kube.GetNode(ctx, k.n.Name)
	if err != nil {
		return fmt.Errorf("get own Node: %w", err)
	}
	sub, err := netip.ParsePrefix(node.Spec.PodCIDR)
	if err != nil {
		return fmt.Errorf("own Node podCIDR %q: %w", node.Spec.PodCIDR, err)
	}
	k.subnet, k.key = sub.Masked(), k.n.Name
	ann := FlannelAnnotations(c.annotationPrefix, k.n.Underlay, flannelVNI, k.mac)
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err := c.kube.PatchNode(ctx, k.n.Name, "status", patch); err != nil {
		return fmt.Errorf("publish own annotations: %w", err)
	}
	k.log.Info("kernel node (flanneld kube emulation) published", "node", k.n.Name, "subnet", k.subnet)
	return nil
}

// kubeResync lists the Nodes and programs the kernel to match; it returns
// the list's resourceVersion.
func (k *kernelNode) kubeResync(ctx context.Context) (string, error) {
	c := k.n.c
	lctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
	defer cancel()
	list, err := c.kube.ListNodes(lctx)
	if err != nil {
		return "", fmt.Errorf("list nodes: %w", err)
	}
	desired := map[netip.Prefix]kernelPeer{}
	for i := range list.Items {
		node := &list.Items[i]
		if node.Name == k.n.Name {
			continue
		}
		l, err := c.nodeLease(node)
		if err != nil || l.BackendType != "vxlan" || !l.PublicIP.Is4() || len(l.VtepMAC) != 6 {
			continue // not (yet) a flannel vxlan node
		}
		desired[l.Subnet] = kernelPeer{publicIP: l.PublicIP, mac: l.VtepMAC.String()}
	}
	return list.ResourceVersion, k.program(desired)
}

// kubeRun watches Nodes and resynchronises on every event; a failed or
// expired watch ends in a re-list after a pause.
func (k *kernelNode) kubeRun(ctx context.Context) {
	c := k.n.c
	for ctx.Err() == nil {
		rv, err := k.kubeResync(ctx)
		if err != nil {
			k.log.Warn("kernel node resync failed; retrying", "err", err)
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		timeout := int64(60)
		w, err := c.kube.WatchNodes(ctx, metav1.ListOptions{ResourceVersion: rv, TimeoutSeconds: &timeout})
		if err == nil {
			for ev := range w.ResultChan() {
				if ev.Type == watch.Error {
					break
				}
				if _, err := k.kubeResync(ctx); err != nil {
					k.log.Warn("kernel node resync failed; re-watching", "err", err)
					break
				}
			}
			w.Stop()
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return
		}
	}
}

// KubeAPIPort is the apiserver's secure port on HubIP.
const KubeAPIPort = 6443

// DefaultAnnotationPrefix is flanneld's --kube-annotation-prefix default.
const DefaultAnnotationPrefix = "flannel.alpha.coreos.com"

// Capture records the IPv4 packets on the node's underlay eth0, as Pod's
// Capture does on a pod's.
func (n *Node) Capture(match func(pkt []byte) bool) (*Capture, error) {
	return (&Pod{Node: n, Name: n.Name, NS: n.NS}).Capture(match)
}

// AddUnderlayAddr adds a second address (in the underlay /24) to the
// node's eth0, e.g. for a public-ip-overwrite.
func (n *Node) AddUnderlayAddr(addr netip.Addr) error {
	return n.NS.netlink(func(h *netlink.Handle) error {
		eth, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		return h.AddrAdd(eth, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(addr, Underlay.Bits()))})
	})
}

// Iperf3 runs iperf3 for d from src to dst (a one-off server in dst) and
// returns the received rate and the sender's retransmits.
func Iperf3(ctx context.Context, src, dst *Pod, d time.Duration) (bitsPerSec float64, retransmits int, err error) {
	t, err := iperf3(ctx, src, dst, d)
	return t.bitsPerSec, t.retransmits, err
}

// AdoptExternal finishes an External node once its own datapath (a real
// flanneld, say) has written n.SubnetFile and published its lease: it
// records the subnet, MTU and VtepMAC and builds the node's cni0 and pods.
// It waits up to a minute for the subnet file.
func (n *Node) AdoptExternal(ctx context.Context) error {
	if n.Kind != External {
		return fmt.Errorf("%s is not an external node", n.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var env map[string]string
	var err error
	for {
		if env, err = readEnvFile(n.SubnetFile); err == nil {
			break
		}
		if !sleepCtx(ctx, 100*time.Millisecond) {
			return fmt.Errorf("%s: no subnet file: %w (last: %v)", n.Name, ctx.Err(), err)
		}
	}
	for {
		if err = n.noteReady(ctx, env); err == nil {
			break
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return fmt.Errorf("%s: %w (last: %v)", n.Name, ctx.Err(), err)
		}
	}
	return n.addPods(ctx)
}
