package kube

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"overlay/e2e/kubeapi/kubeapitest"
	"overlay/lease"
)

// logBuf collects log lines for assertions; safe for concurrent use.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.b.String(), s)
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// peerLog records Watch's snapshots.
type peerLog struct {
	mu    sync.Mutex
	last  []lease.Lease
	calls int
}

func (p *peerLog) set(ls []lease.Lease) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last, p.calls = ls, p.calls+1
}

func (p *peerLog) get() (map[string]lease.Lease, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := map[string]lease.Lease{}
	for _, l := range p.last {
		m[l.Node] = l
	}
	return m, p.calls
}

// names lists the peers of the last snapshot, in its order (by subnet).
func (p *peerLog) names() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var s []string
	for _, l := range p.last {
		s = append(s, l.Node)
	}
	return strings.Join(s, ",")
}

func createNode(t *testing.T, c corev1client.CoreV1Interface, n *corev1.Node) {
	t.Helper()
	n.ResourceVersion = ""
	if _, err := c.Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func patchNode(t *testing.T, c corev1client.CoreV1Interface, name, body string) {
	t.Helper()
	if _, err := c.Nodes().Patch(context.Background(), name, types.StrategicMergePatchType, []byte(body), metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch node %s with %s: %v", name, body, err)
	}
}

func peerNode(name, cidr, ip, mac string) *corev1.Node {
	return node(name, []string{cidr}, peerAnnotations(ip, fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, mac)))
}

// TestAPIServer runs the manager against a real kube-apiserver (over the
// project's embedded etcd): the wait for a pod CIDR, the annotations as
// the API server stores them, byte for byte, the NetworkUnavailable
// condition, Keep republishing, peers added, changed, deleted and
// malformed, and an API server crash and restart.
func TestAPIServer(t *testing.T) {
	srv := kubeapitest.New(t)
	rc, err := ClientOptions{Kubeconfig: srv.Kubeconfig()}.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	mc, err := NewClient(rc) // the manager's own client
	if err != nil {
		t.Fatal(err)
	}
	// The test changes Nodes with client-go's typed client.
	c, err := corev1client.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	testNodeNameFromPod(t, c, mc)
	var logs logBuf
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := mustConfig(t, netConf)
	m, err := New(Options{Client: mc, NodeName: "node-a", Config: cfg, SetNodeNetworkUnavailable: true,
		Logger: log, PollInterval: 100 * time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mac, _ := net.ParseMAC("3a:2e:6c:5d:b4:d6")
	acq := lease.AcquireOptions{PublicIP: netip.MustParseAddr("172.30.250.11"), VtepMAC: mac}

	// Acquire waits for the Node, then for its pod CIDR.
	type result struct {
		l   *lease.Lease
		err error
	}
	got := make(chan result, 1)
	go func() {
		l, err := m.Acquire(ctx, acq)
		got <- result{l, err}
	}()
	eventually(t, 10*time.Second, "the wait-for-registration line", func() bool { return logs.has("waiting for the node to be registered") })
	createNode(t, c, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Annotations: map[string]string{"example.com/keep": "me"}}})
	eventually(t, 10*time.Second, "the wait-for-pod-CIDR line", func() bool { return logs.has("waiting for the node to get a pod CIDR") })
	select {
	case r := <-got:
		t.Fatalf("Acquire returned before the node had a pod CIDR: %+v, %v", r.l, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	patchNode(t, c, "node-a", `{"spec":{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24"]}}`)
	var own *lease.Lease
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatal(r.err)
		}
		own = r.l
	case <-time.After(20 * time.Second):
		t.Fatal("Acquire did not return after the pod CIDR was set")
	}
	if own.Subnet != netip.MustParsePrefix("10.244.1.0/24") || own.Node != "node-a" || own.PublicIP != acq.PublicIP {
		t.Errorf("own lease %+v", own)
	}
	n, err := c.Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The bytes as the API server stores them, the same as flanneld's.
	want := map[string]string{
		"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d6"}`,
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
		"flannel.alpha.coreos.com/public-ip":           "172.30.250.11",
		"example.com/keep":                             "me",
	}
	for k, v := range want {
		if n.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, n.Annotations[k], v)
		}
	}
	if len(n.Annotations) != len(want) {
		t.Errorf("annotations %v, want exactly %v", n.Annotations, want)
	}

	// Keep sets the condition, and republishes what someone removes.
	changes := make(chan lease.Lease, 10)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := m.Keep(ctx, own, acq, func(l lease.Lease) { changes <- l }); err != nil {
			t.Errorf("Keep: %v", err)
		}
	}()
	peers := &peerLog{}
	go func() {
		defer wg.Done()
		if err := m.Watch(ctx, acq.PublicIP, peers.set); err != nil {
			t.Errorf("Watch: %v", err)
		}
	}()
	condition := func() *corev1.NodeCondition {
		n, err := c.Nodes().Get(ctx, "node-a", metav1.GetOptions{})
		if err != nil {
			return nil
		}
		for i := range n.Status.Conditions {
			if n.Status.Conditions[i].Type == corev1.NodeNetworkUnavailable {
				return &n.Status.Conditions[i]
			}
		}
		return nil
	}
	eventually(t, 20*time.Second, "NetworkUnavailable=False", func() bool {
		c := condition()
		return c != nil && c.Status == corev1.ConditionFalse && c.Reason == "FlannelIsUp"
	})
	annotation := func(name, key string) string {
		n, err := c.Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "error: " + err.Error()
		}
		return n.Annotations[key]
	}
	k := m.Keys()
	patchNode(t, c, "node-a", `{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":null}}}`)
	eventually(t, 20*time.Second, "backend-data republished", func() bool {
		return annotation("node-a", k.BackendData) == `{"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d6"}`
	})
	// An operator's public-ip-overwrite on our Node is adopted.
	patchNode(t, c, "node-a", `{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip-overwrite":"192.0.2.11"}}}`)
	select {
	case l := <-changes:
		if l.PublicIP != netip.MustParseAddr("192.0.2.11") || l.Subnet != own.Subnet {
			t.Errorf("lease after the overwrite: %+v", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Keep did not adopt public-ip-overwrite")
	}
	eventually(t, 20*time.Second, "public-ip = the overwrite", func() bool { return annotation("node-a", k.PublicIP) == "192.0.2.11" })

	// Peers: added, malformed, ignored, changed, overwritten, deleted.
	eventually(t, 20*time.Second, "the first snapshot", func() bool { _, calls := peers.get(); return calls > 0 })
	if names := peers.names(); names != "" {
		t.Errorf("peers %q before any other node, want none (our own Node is not a peer)", names)
	}
	createNode(t, c, peerNode("node-b", "10.244.2.0/24", "172.30.250.12", "3a:2e:6c:5d:b4:02"))
	createNode(t, c, peerNode("node-c", "10.244.3.0/24", "172.30.250.13", "not-a-mac"))
	createNode(t, c, node("node-d", []string{"10.244.4.0/24"}, nil)) // no flannel yet
	eventually(t, 20*time.Second, "peer node-b", func() bool { return peers.names() == "node-b" })
	eventually(t, 20*time.Second, "node-c counted", func() bool { return m.MalformedPeers() == 1 })
	if !logs.has(`msg="skipping a node whose flannel lease cannot be used" node=node-a peer=node-c`) {
		t.Error("no warning naming node-c")
	}
	b, _ := peers.get()
	if l := b["node-b"]; l.Subnet != netip.MustParsePrefix("10.244.2.0/24") || l.PublicIP != netip.MustParseAddr("172.30.250.12") ||
		l.VtepMAC.String() != "3a:2e:6c:5d:b4:02" || l.Key != "node/node-b" {
		t.Errorf("peer node-b %+v", l)
	}
	patchNode(t, c, "node-b", `{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"3a:2e:6c:5d:b4:22\"}"}}}`)
	eventually(t, 20*time.Second, "node-b's new VtepMAC", func() bool { b, _ := peers.get(); return b["node-b"].VtepMAC.String() == "3a:2e:6c:5d:b4:22" })
	patchNode(t, c, "node-b", `{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip-overwrite":"192.0.2.12"}}}`)
	eventually(t, 20*time.Second, "node-b's overwrite", func() bool { b, _ := peers.get(); return b["node-b"].PublicIP == netip.MustParseAddr("192.0.2.12") })
	// node-d joins the cluster (its flanneld writes the annotations).
	patchNode(t, c, "node-d", `{"metadata":{"annotations":{"flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/backend-type":"vxlan",`+
		`"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"3a:2e:6c:5d:b4:04\"}","flannel.alpha.coreos.com/public-ip":"172.30.250.14"}}}`)
	eventually(t, 20*time.Second, "peer node-d", func() bool { return peers.names() == "node-b,node-d" })
	if n := m.MalformedPeers(); n != 1 {
		t.Errorf("MalformedPeers = %d, want 1 (node-c only; unmanaged node-d is not malformed)", n)
	}
	if err := c.Nodes().Delete(ctx, "node-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "node-b removed", func() bool { return peers.names() == "node-d" })

	// The API server crashes: the peers stay; it comes back: Watch and Keep
	// reconcile, and node-c, listed again unchanged, is not counted again.
	_, callsBefore := peers.get()
	srv.Kill()
	time.Sleep(2 * time.Second)
	if names, _ := peers.get(); len(names) != 1 {
		t.Errorf("peers during the outage: %v, want node-d kept", names)
	}
	srv.Restart()
	createNode(t, c, peerNode("node-e", "10.244.5.0/24", "172.30.250.15", "3a:2e:6c:5d:b4:05"))
	if err := c.Nodes().Delete(ctx, "node-d", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the peers after the restart", func() bool { return peers.names() == "node-e" })
	if _, calls := peers.get(); calls <= callsBefore {
		t.Errorf("no delivery after the restart")
	}
	if n := m.MalformedPeers(); n != 1 {
		t.Errorf("MalformedPeers = %d after the relist, want still 1", n)
	}
	patchNode(t, c, "node-a", `{"metadata":{"annotations":{"flannel.alpha.coreos.com/kube-subnet-manager":null}}}`)
	eventually(t, 60*time.Second, "kube-subnet-manager republished after the restart", func() bool { return annotation("node-a", k.Managed) == "true" })

	// Our Node deleted and registered again: annotations and condition
	// come back.
	if err := c.Nodes().Delete(ctx, "node-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the deleted-node warning", func() bool { return logs.has("this node's Node was deleted") })
	createNode(t, c, node("node-a", []string{"10.244.1.0/24"}, nil))
	eventually(t, 20*time.Second, "annotations on the new Node", func() bool { return annotation("node-a", k.PublicIP) == "172.30.250.11" })
	eventually(t, 20*time.Second, "the condition on the new Node", func() bool {
		c := condition()
		return c != nil && c.Status == corev1.ConditionFalse
	})
	cancel()
	wg.Wait()
	if _, err := c.Nodes().Get(context.Background(), "node-zz", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("sanity: %v", err)
	}
}

// testNodeNameFromPod checks flanneld's fallback: the node name is the
// spec.nodeName of the pod POD_NAMESPACE/POD_NAME.
func testNodeNameFromPod(t *testing.T, c corev1client.CoreV1Interface, mc Client) {
	t.Helper()
	ctx := context.Background()
	// No controller manager runs here to create the default service
	// account that pod admission asks for.
	if _, err := c.ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "overlay-x", Namespace: "default"},
		Spec:       corev1.PodSpec{NodeName: "node-p", Containers: []corev1.Container{{Name: "overlay", Image: "overlay"}}},
	}
	if _, err := c.Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	name, err := NodeName(ctx, mc, env(map[string]string{"POD_NAME": "overlay-x", "POD_NAMESPACE": "default"}))
	if err != nil || name != "node-p" {
		t.Errorf("NodeName from the pod = %q, %v; want node-p", name, err)
	}
	if _, err := NodeName(ctx, mc, env(map[string]string{"POD_NAME": "missing", "POD_NAMESPACE": "default"})); !apierrors.IsNotFound(err) {
		t.Errorf("NodeName of a missing pod: %v, want not found", err)
	}
	if name, err := NodeName(ctx, mc, env(map[string]string{"NODE_NAME": "n", "POD_NAME": "overlay-x", "POD_NAMESPACE": "default"})); name != "n" || err != nil {
		t.Errorf("NODE_NAME wins: %q, %v", name, err)
	}
}
