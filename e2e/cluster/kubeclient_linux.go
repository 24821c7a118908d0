package cluster

import (
	"context"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// KubeClient is the harness's admin client of a kube-mode cluster: the
// few calls a controller-manager and an operator make on Nodes, and what
// applying the manifest's RBAC needs. It is REST clients over a scheme of
// core/v1, rbac/v1 and authentication/v1 only: client-go's typed clientset
// registers every API group, and this package is linked into the overlay
// binary (for `overlay demo`), whose size the kube subnet manager keeps
// small the same way.
type KubeClient struct {
	core, rbac rest.Interface
	params     runtime.ParameterCodec
	codecs     serializer.CodecFactory
}

func newKubeClient(cfg *rest.Config) (*KubeClient, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, rbacv1.AddToScheme, authenticationv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, err
		}
	}
	codecs := serializer.NewCodecFactory(scheme)
	mk := func(gv schema.GroupVersion, apiPath string) (rest.Interface, error) {
		c := rest.CopyConfig(cfg)
		c.GroupVersion, c.APIPath = &gv, apiPath
		c.ContentType = runtime.ContentTypeJSON
		c.NegotiatedSerializer = codecs.WithoutConversion()
		if c.UserAgent == "" {
			c.UserAgent = "overlay-e2e-harness"
		}
		return rest.RESTClientFor(c)
	}
	core, err := mk(corev1.SchemeGroupVersion, "/api")
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	rbac, err := mk(rbacv1.SchemeGroupVersion, "/apis")
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &KubeClient{core: core, rbac: rbac, params: runtime.NewParameterCodec(scheme), codecs: codecs}, nil
}

// decode decodes one manifest document of a kind the client's scheme
// knows (an error for other kinds, e.g. apps/v1 DaemonSet).
func (k *KubeClient) decode(doc []byte) (runtime.Object, error) {
	obj, _, err := k.codecs.UniversalDeserializer().Decode(doc, nil, nil)
	return obj, err
}

// GetNode, ListNodes, WatchNodes, CreateNode, DeleteNode and PatchNode
// work on Nodes; subresource "" or "status".
func (k *KubeClient) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	n := &corev1.Node{}
	return n, k.core.Get().Resource("nodes").Name(name).Do(ctx).Into(n)
}

func (k *KubeClient) ListNodes(ctx context.Context) (*corev1.NodeList, error) {
	l := &corev1.NodeList{}
	return l, k.core.Get().Resource("nodes").Do(ctx).Into(l)
}

func (k *KubeClient) WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return k.core.Get().Resource("nodes").VersionedParams(&opts, k.params).Watch(ctx)
}

func (k *KubeClient) CreateNode(ctx context.Context, n *corev1.Node) error {
	return k.core.Post().Resource("nodes").Body(n).Do(ctx).Error()
}

func (k *KubeClient) DeleteNode(ctx context.Context, name string) error {
	return k.core.Delete().Resource("nodes").Name(name).Do(ctx).Error()
}

func (k *KubeClient) PatchNode(ctx context.Context, name, subresource string, patch []byte) error {
	r := k.core.Patch(types.StrategicMergePatchType).Resource("nodes").Name(name)
	if subresource != "" {
		r = r.SubResource(subresource)
	}
	return r.Body(patch).Do(ctx).Error()
}

// create posts a core/v1 (namespace "" for cluster-scoped) or rbac/v1
// object.
func (k *KubeClient) create(ctx context.Context, obj runtime.Object) error {
	switch o := obj.(type) {
	case *corev1.Namespace:
		return k.core.Post().Resource("namespaces").Body(o).Do(ctx).Error()
	case *corev1.ServiceAccount:
		return k.core.Post().Namespace(o.Namespace).Resource("serviceaccounts").Body(o).Do(ctx).Error()
	case *rbacv1.ClusterRole:
		return k.rbac.Post().Resource("clusterroles").Body(o).Do(ctx).Error()
	case *rbacv1.ClusterRoleBinding:
		return k.rbac.Post().Resource("clusterrolebindings").Body(o).Do(ctx).Error()
	}
	return nil
}

// token requests a token of a ServiceAccount (TokenRequest API).
func (k *KubeClient) token(ctx context.Context, namespace, name string, seconds int64) (string, error) {
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds}}
	out := &authenticationv1.TokenRequest{}
	err := k.core.Post().Namespace(namespace).Resource("serviceaccounts").Name(name).SubResource("token").Body(tr).Do(ctx).Into(out)
	return out.Status.Token, err
}
