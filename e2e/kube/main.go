// Command kube-apiserver-test runs a real kube-apiserver (k8s.io/kubernetes's
// own, the same code as the kube-apiserver binary) over an external etcd, for
// the end-to-end tests of overlay's kube subnet manager. It lives in its own
// Go module so the overlay agent never links Kubernetes' server code.
//
// It makes a CA, a serving certificate, an admin client certificate (group
// system:masters) and a service-account key in --cert-dir (reused when they
// are there, so a restart keeps them), writes an admin kubeconfig there,
// starts the server on --bind-address:--port with RBAC authorization, and
// prints one line
//
//	kube-apiserver-test: ready https://ADDR:PORT kubeconfig=PATH
//
// on stdout once /readyz answers ok. SIGTERM or SIGINT stops it. Arguments
// after "--" go to kube-apiserver unchanged.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	fs := flag.NewFlagSet("kube-apiserver-test", flag.ExitOnError)
	etcd := fs.String("etcd-servers", "", "etcd client URL(s), comma-separated (required)")
	bind := fs.String("bind-address", "127.0.0.1", "address to serve on, also the kubeconfig's server address")
	port := fs.Int("port", 6443, "secure port")
	certDir := fs.String("cert-dir", "", "directory for certificates, keys and admin.kubeconfig (required)")
	prefix := fs.String("etcd-prefix", "/registry", "etcd key prefix for Kubernetes objects")
	verbosity := fs.Int("v", 0, "kube-apiserver log verbosity")
	_ = fs.Parse(os.Args[1:])
	if *etcd == "" || *certDir == "" {
		fmt.Fprintln(os.Stderr, "kube-apiserver-test: --etcd-servers and --cert-dir are required")
		os.Exit(2)
	}
	ip := net.ParseIP(*bind)
	if ip == nil || ip.IsUnspecified() {
		fmt.Fprintf(os.Stderr, "kube-apiserver-test: --bind-address %q: want one IP address\n", *bind)
		os.Exit(2)
	}
	if *port <= 0 || *port > 65535 {
		fmt.Fprintf(os.Stderr, "kube-apiserver-test: --port %d: want 1-65535\n", *port)
		os.Exit(2)
	}
	dir, err := filepath.Abs(*certDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-apiserver-test:", err)
		os.Exit(1)
	}
	kubeconfig, err := ensureCerts(dir, ip, *port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-apiserver-test: certificates:", err)
		os.Exit(1)
	}
	f := func(name string) string { return filepath.Join(dir, name) }
	args := []string{
		"--etcd-servers=" + *etcd,
		"--etcd-prefix=" + *prefix,
		"--bind-address=" + ip.String(),
		"--advertise-address=" + ip.String(),
		"--secure-port=" + strconv.Itoa(*port),
		"--cert-dir=" + dir,
		"--tls-cert-file=" + f(serveCertFile),
		"--tls-private-key-file=" + f(serveKeyFile),
		"--client-ca-file=" + f(caCertFile),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + f(saKeyFile),
		"--service-account-signing-key-file=" + f(saKeyFile),
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=RBAC",
		// No Service endpoints to keep: the address is a test namespace's.
		"--endpoint-reconciler-type=none",
		// Two cores shared by every test: no flow-control bookkeeping.
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=" + strconv.Itoa(*verbosity),
	}
	args = append(args, fs.Args()...)

	url := "https://" + net.JoinHostPort(ip.String(), strconv.Itoa(*port))
	go announceReady(dir, url, kubeconfig)

	cmd := app.NewAPIServerCommand()
	cmd.SetArgs(args)
	os.Exit(cli.Run(cmd))
}

// announceReady polls url/readyz with the admin certificate and prints the
// ready line once it answers 200.
func announceReady(dir, url, kubeconfig string) {
	client, err := adminClient(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-apiserver-test: readiness client:", err)
		return
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/readyz", nil)
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		cancel()
		if err == nil && resp.StatusCode == http.StatusOK {
			fmt.Printf("kube-apiserver-test: ready %s kubeconfig=%s\n", url, kubeconfig)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func adminClient(dir string) (*http.Client, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, adminCertFile), filepath.Join(dir, adminKeyFile))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s: no certificate", caCertFile)
	}
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}},
	}}, nil
}
