package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"

	"overlay/lease"
	"overlay/lease/internal/retry"
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

// NodeName returns this node's Node name as flanneld finds it: $NODE_NAME,
// else the spec.nodeName of the pod $POD_NAMESPACE/$POD_NAME (read from
// the API server, retrying transient failures until ctx ends: the agent
// runs in that pod). CheckNodeEnv tells without contacting anything
// whether one of the two is set.
func NodeName(ctx context.Context, c Client, getenv func(string) string) (string, error) {
	if err := CheckNodeEnv(getenv); err != nil {
		return "", err
	}
	if n := getenv("NODE_NAME"); n != "" {
		return n, nil
	}
	ns, name := getenv("POD_NAMESPACE"), getenv("POD_NAME")
	bo := &retry.Backoff{Min: 200 * time.Millisecond, Max: 10 * time.Second}
	for {
		rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		pod, err := c.GetPod(rctx, ns, name)
		cancel()
		switch {
		case err == nil && pod.Spec.NodeName != "":
			return pod.Spec.NodeName, nil
		case err == nil:
			err = errors.New("the pod has no spec.nodeName yet")
		case ctx.Err() != nil:
			return "", ctx.Err()
		case permanent(err) || apierrors.IsNotFound(err):
			return "", fmt.Errorf("find this node's name from pod %s/%s: %w", ns, name, err)
		}
		if !retry.Sleep(ctx, bo.Next()) {
			return "", fmt.Errorf("find this node's name from pod %s/%s: %w (%w)", ns, name, err, ctx.Err())
		}
	}
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
