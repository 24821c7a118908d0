package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"

	"overlay/lease"
)

// ClientOptions say how to reach the API server, with flanneld's flags.
type ClientOptions struct {
	// Kubeconfig is a kubeconfig file (--kubeconfig-file).
	Kubeconfig string
	// APIURL is the API server's URL (--kube-api-url); with Kubeconfig it
	// overrides the file's server.
	APIURL string
	// Getenv reads the environment (os.Getenv when nil).
	Getenv func(string) string
}

// ErrNoAPIServer means neither a kubeconfig nor an API URL was given and
// the agent does not run in a pod. Pass --kubeconfig-file or
// --kube-api-url.
var ErrNoAPIServer = errors.New("no API server: give --kubeconfig-file or --kube-api-url, or run in a pod (KUBERNETES_SERVICE_HOST is not set)")

// RESTConfig returns the client config: the kubeconfig file and/or API URL
// when given, else the in-cluster config (the pod's service account) when
// KUBERNETES_SERVICE_HOST is set, else ErrNoAPIServer. It reads only local
// files and contacts nothing.
func (o ClientOptions) RESTConfig() (*rest.Config, error) {
	getenv := o.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	if o.APIURL != "" {
		u, err := url.Parse(o.APIURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("--kube-api-url %q: want an http or https URL such as https://10.0.0.1:6443", o.APIURL)
		}
	}
	if o.Kubeconfig != "" || o.APIURL != "" {
		if o.Kubeconfig != "" {
			if _, err := os.Stat(o.Kubeconfig); err != nil {
				return nil, fmt.Errorf("--kubeconfig-file: %w", err)
			}
		}
		cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: o.Kubeconfig},
			&clientcmd.ConfigOverrides{ClusterInfo: clientcmdAPICluster(o.APIURL)}).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", o.Kubeconfig, err)
		}
		return cfg, nil
	}
	if getenv("KUBERNETES_SERVICE_HOST") == "" {
		return nil, ErrNoAPIServer
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config: %w", err)
	}
	return cfg, nil
}

// NewClient returns a client of the core API group for cfg, identifying
// itself as overlay.
func NewClient(cfg *rest.Config) (corev1client.CoreV1Interface, error) {
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = "overlay"
	}
	c, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}

// NodeName returns this node's Node name as flanneld finds it: $NODE_NAME,
// else the spec.nodeName of the pod $POD_NAMESPACE/$POD_NAME (read from
// the API server: the agent runs in that pod). CheckNodeEnv tells without
// contacting anything whether one of the two is set.
func NodeName(ctx context.Context, c corev1client.CoreV1Interface, getenv func(string) string) (string, error) {
	if err := CheckNodeEnv(getenv); err != nil {
		return "", err
	}
	if n := getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	ns, name := getenv("POD_NAMESPACE"), getenv("POD_NAME")
	pod, err := c.Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("find this node's name from pod %s/%s: %w", ns, name, err)
	}
	if pod.Spec.NodeName == "" {
		return "", fmt.Errorf("pod %s/%s has no spec.nodeName yet", ns, name)
	}
	return pod.Spec.NodeName, nil
}

// CheckNodeEnv reports an error unless NODE_NAME, or POD_NAME and
// POD_NAMESPACE, are set.
func CheckNodeEnv(getenv func(string) string) error {
	if getenv("NODE_NAME") != "" || (getenv("POD_NAME") != "" && getenv("POD_NAMESPACE") != "") {
		return nil
	}
	return errors.New("set NODE_NAME to this node's Node name (in a DaemonSet: env NODE_NAME from fieldRef spec.nodeName), " +
		"or POD_NAME and POD_NAMESPACE")
}

var klogOnce sync.Once

// RouteKlog sends client-go's logs (klog) to log, once per process.
func RouteKlog(log *slog.Logger) {
	klogOnce.Do(func() { klog.SetSlogLogger(log.With("component", "client-go")) })
}

func clientcmdAPICluster(server string) clientcmdapi.Cluster {
	return clientcmdapi.Cluster{Server: server}
}

// ReadNetConf reads and validates flannel's net-conf.json (the same JSON
// as the etcd config key), so that a bad file is refused before anything
// is touched.
func ReadNetConf(path string) (*lease.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--net-config-path: %w", err)
	}
	cfg, err := lease.ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("network config %s: %w", path, err)
	}
	return cfg, nil
}
