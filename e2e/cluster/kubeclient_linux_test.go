package cluster

import (
	"context"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"overlay/e2e/kubeapi/kubeapitest"
)

// TestKubeClientAndAgentRBAC runs the harness's KubeClient against a real
// apiserver on loopback (no namespaces): it applies the deploy manifest's
// RBAC and writes the agents' kubeconfig; with that kubeconfig's token a
// client may list Nodes and patch their status, and may not create or
// delete Nodes. Node create/get/list/watch/patch/delete of the admin
// client work as the e2e tests use them.
func TestKubeClientAndAgentRBAC(t *testing.T) {
	srv := kubeapitest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rc, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	kc, err := newKubeClient(rc)
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{opts: Options{WorkDir: t.TempDir(), NetworkConfig: DefaultNetwork}, kube: kc, annotationPrefix: DefaultAnnotationPrefix}
	if err := c.writeAgentKubeconfig(ctx, srv.Server); err != nil {
		t.Fatal(err)
	}

	n := &Node{Name: "kc-n1", Index: 1}
	if err := c.registerNode(ctx, n); err != nil {
		t.Fatal(err)
	}
	w, err := kc.WatchNodes(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	arc, err := clientcmd.BuildConfigFromFlags("", c.AgentKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	agent, err := newKubeClient(arc)
	if err != nil {
		t.Fatal(err)
	}
	list, err := agent.ListNodes(ctx)
	if err != nil || len(list.Items) != 1 || list.Items[0].Spec.PodCIDR != "10.244.1.0/24" {
		t.Fatalf("agent lists nodes: %v, %+v", err, list)
	}
	ann := FlannelAnnotations(DefaultAnnotationPrefix, netip.MustParseAddr("172.30.250.11"), 1, []byte{2, 0, 0, 0, 0, 1})
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err := agent.PatchNode(ctx, n.Name, "status", patch); err != nil {
		t.Fatalf("agent patches nodes/status: %v", err)
	}
	if err := agent.PatchNode(ctx, n.Name, "", patch); !apierrors.IsForbidden(err) {
		t.Errorf("agent patches the Node itself: %v, want Forbidden", err)
	}
	if err := agent.DeleteNode(ctx, n.Name); !apierrors.IsForbidden(err) {
		t.Errorf("agent deletes a Node: %v, want Forbidden", err)
	}
	l, err := c.kubeLease(ctx, n.Name)
	if err != nil || l.PublicIP.String() != "172.30.250.11" || l.VtepMAC.String() != "02:00:00:00:00:01" || l.Subnet.String() != "10.244.1.0/24" {
		t.Fatalf("lease from the Node: %+v, %v", l, err)
	}
	if err := c.SetNodeAnnotation(ctx, n, "public-ip-overwrite", "172.30.250.111"); err != nil {
		t.Fatal(err)
	}
	if l, err := c.kubeLease(ctx, n.Name); err != nil || l.PublicIP.String() != "172.30.250.111" {
		t.Fatalf("lease after public-ip-overwrite: %+v, %v", l, err)
	}
	if err := c.DeleteNodeObject(ctx, n); err != nil {
		t.Fatal(err)
	}
	var types []string
	for len(types) < 4 {
		select {
		case ev := <-w.ResultChan():
			types = append(types, string(ev.Type))
		case <-ctx.Done():
			t.Fatalf("watch events %v: %v", types, ctx.Err())
		}
	}
	if types[0] != "ADDED" || types[len(types)-1] != "DELETED" {
		t.Errorf("watch events %v, want ADDED ... DELETED", types)
	}
}
