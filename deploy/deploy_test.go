package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"overlay/e2e/kubeapi/kubeapitest"
	"overlay/lease"
)

const manifest = "kube-overlay.yml"

// decode splits a multi-document YAML manifest into objects.
func decode(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var m map[string]any
		err := d.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", manifest, len(objs)+1, err)
		}
		if m == nil {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

// applier applies objects by server-side apply, as `kubectl apply
// --server-side` does, optionally as a dry run; field validation is strict,
// so unknown or duplicate fields are errors, as in kubectl's default
// --validate=strict.
type applier struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func newApplier(t *testing.T, kubeconfig string) (*applier, *kubernetes.Clientset) {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}, cs
}

func (a *applier) apply(ctx context.Context, o *unstructured.Unstructured, dryRun bool) error {
	gvk := o.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return err
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = a.dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	body, err := json.Marshal(o.Object)
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: "deploy-test", FieldValidation: "Strict", Force: new(true)}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = ri.Patch(ctx, o.GetName(), types.ApplyPatchType, body, opts)
	return err
}

// dryRun applies every object as a dry run (the namespace must exist).
func (a *applier) dryRun(ctx context.Context, objs []*unstructured.Unstructured) error {
	var errs []error
	for _, o := range objs {
		if err := a.apply(ctx, o, true); err != nil {
			errs = append(errs, errors.New(o.GetKind()+"/"+o.GetName()+": "+err.Error()))
		}
	}
	return errors.Join(errs...)
}

// TestManifestServerDryRun: every object of kube-overlay.yml passes the
// real apiserver's validation and admission in a dry run; the dry run
// creates nothing; after a real apply the ServiceAccount may do exactly
// what the agent needs and nothing more.
func TestManifestServerDryRun(t *testing.T) {
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	objs := decode(t, data)
	kinds := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		kinds[o.GetKind()] = o
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"} {
		if kinds[k] == nil {
			t.Fatalf("%s has no %s", manifest, k)
		}
	}

	srv := kubeapitest.New(t)
	ap, cs := newApplier(t, srv.Kubeconfig())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Namespaced objects can be dry-run only into a namespace that
	// exists (kubectl apply --dry-run=server has the same limit), so the
	// Namespace is applied for real first.
	ns := kinds["Namespace"]
	if err := ap.apply(ctx, ns, false); err != nil {
		t.Fatalf("apply Namespace: %v", err)
	}
	if err := ap.dryRun(ctx, objs); err != nil {
		t.Fatalf("server-side dry run of %s:\n%v", manifest, err)
	}
	sa := kinds["ServiceAccount"]
	if _, err := cs.CoreV1().ServiceAccounts(sa.GetNamespace()).Get(ctx, sa.GetName(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("after the dry run, get ServiceAccount: %v, want NotFound (a dry run must create nothing)", err)
	}

	for _, o := range objs {
		if err := ap.apply(ctx, o, false); err != nil {
			t.Fatalf("apply %s/%s: %v", o.GetKind(), o.GetName(), err)
		}
	}
	user := "system:serviceaccount:" + sa.GetNamespace() + ":" + sa.GetName()
	for _, c := range []struct {
		verb, resource, sub string
		allowed             bool
	}{
		{"get", "nodes", "", true},
		{"list", "nodes", "", true},
		{"watch", "nodes", "", true},
		{"patch", "nodes", "status", true},
		{"get", "pods", "", true},
		{"patch", "nodes", "", false},
		{"update", "nodes", "", false},
		{"delete", "nodes", "", false},
		{"create", "nodes", "", false},
		{"update", "nodes", "status", false},
		{"list", "pods", "", false},
		{"get", "secrets", "", false},
		{"get", "configmaps", "", false},
	} {
		r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:               user,
				Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + sa.GetNamespace(), "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: c.verb, Resource: c.resource, Subresource: c.sub},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SubjectAccessReview: %v", err)
		}
		if r.Status.Allowed != c.allowed {
			t.Errorf("%s %s %s/%s: allowed=%v, want %v (%s)", user, c.verb, c.resource, c.sub, r.Status.Allowed, c.allowed, r.Status.Reason)
		}
	}
}

// TestManifestContent checks what the dry run cannot: the configs parse
// with overlay's own parser and the DaemonSet runs the agent as the issue
// asks (host network, TUN device, NET_ADMIN, not privileged, /readyz).
func TestManifestContent(t *testing.T) {
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	var ds appsv1.DaemonSet
	for _, o := range decode(t, data) {
		var into any
		switch o.GetKind() {
		case "ConfigMap":
			into = &cm
		case "DaemonSet":
			into = &ds
		default:
			continue
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true); err != nil {
			t.Fatalf("%s: %v", o.GetKind(), err)
		}
	}
	cfg, err := lease.ParseConfig([]byte(cm.Data["net-conf.json"]))
	if err != nil {
		t.Fatalf("net-conf.json: %v", err)
	}
	if cfg.Backend.Type != "vxlan" {
		t.Errorf("net-conf.json backend %q, want vxlan", cfg.Backend.Type)
	}
	var cni struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(cm.Data["cni-conf.json"]), &cni); err != nil {
		t.Fatalf("cni-conf.json: %v", err)
	}
	var types []string
	for _, p := range cni.Plugins {
		types = append(types, p.Type)
	}
	if strings.Join(types, ",") != "flannel,portmap" || cni.CNIVersion == "" {
		t.Errorf("cni-conf.json plugins %v version %q, want flannel,portmap with a cniVersion", types, cni.CNIVersion)
	}

	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("DaemonSet is not hostNetwork")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("DaemonSet has %d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if strings.Join(c.Args, " ") != "up --kube-subnet-mgr --ip-masq" {
		t.Errorf("agent args %q", c.Args)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil {
		t.Fatalf("agent securityContext %+v: want privileged: false and capabilities", sc)
	}
	var caps []string
	for _, cp := range sc.Capabilities.Add {
		caps = append(caps, string(cp))
	}
	if strings.Join(caps, ",") != "NET_ADMIN,NET_RAW" {
		t.Errorf("capabilities %v, want NET_ADMIN,NET_RAW", caps)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.IntValue() != 8471 {
		t.Errorf("readiness probe %+v, want GET /readyz on 8471", p)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["NODE_NAME"] != "spec.nodeName" {
		t.Errorf("NODE_NAME from %q, want fieldRef spec.nodeName", env["NODE_NAME"])
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	for path, want := range map[string]string{"/dev/net/tun": "/dev/net/tun", "/run/flannel": "/run/flannel"} {
		v, ok := vols[mounts[path]]
		if !ok || v.HostPath == nil || v.HostPath.Path != want {
			t.Errorf("mount %s: volume %+v, want hostPath %s", path, v, want)
		}
	}
	if v := vols[mounts["/dev/net/tun"]]; v.HostPath == nil || v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathCharDev {
		t.Errorf("/dev/net/tun volume is not a CharDevice hostPath: %+v", v)
	}
	if v, ok := vols[mounts["/etc/kube-flannel/"]]; !ok || v.ConfigMap == nil || v.ConfigMap.Name != cm.Name {
		t.Errorf("/etc/kube-flannel/ is not the ConfigMap %s: %+v", cm.Name, v)
	}
}

// TestManifestBrokenRejected: the dry run really validates: each broken
// copy of the manifest is refused by the server.
func TestManifestBrokenRejected(t *testing.T) {
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	srv := kubeapitest.New(t)
	ap, _ := newApplier(t, srv.Kubeconfig())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, b := range []struct{ name, from, to, want string }{
		{"misspelt field", "      hostNetwork: true\n", "      hostNetwrok: true\n", "hostNetwrok: field not declared"},
		{"bad hostPath type", "          type: CharDevice\n", "          type: CharDev\n", `Unsupported value: "CharDev"`},
		{"selector does not match the template", "    matchLabels:\n      k8s-app: overlay\n", "    matchLabels:\n      k8s-app: overlay-x\n", "`selector` does not match template `labels`"},
		{"unknown RBAC verb field", "  verbs: [\"patch\"]\n", "  verb: [\"patch\"]\n", "verb: field not declared"},
	} {
		t.Run(b.name, func(t *testing.T) {
			if !bytes.Contains(data, []byte(b.from)) {
				t.Fatalf("manifest no longer contains %q: update this case", b.from)
			}
			objs := decode(t, bytes.Replace(data, []byte(b.from), []byte(b.to), 1))
			for _, o := range objs {
				if o.GetKind() == "Namespace" {
					if err := ap.apply(ctx, o, false); err != nil {
						t.Fatal(err)
					}
				}
			}
			err := ap.dryRun(ctx, objs)
			if err == nil {
				t.Fatal("dry run accepted the broken manifest")
			}
			if !strings.Contains(err.Error(), b.want) {
				t.Fatalf("dry run refused it, but not for the broken field (want %q): %v", b.want, err)
			}
		})
	}
}
