package kubeapi_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"overlay/e2e/kubeapi"
	"overlay/e2e/kubeapi/kubeapitest"
)

// adminClient speaks to srv with the admin certificate of its kubeconfig.
func adminClient(t *testing.T, srv *kubeapitest.Server) *http.Client {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(srv.AdminCertFile(), srv.AdminKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(srv.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}},
	}}
}

func do(t *testing.T, c *http.Client, method, url string, body any) (int, map[string]any) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, r)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &out)
	return resp.StatusCode, out
}

// TestServerRestart: a Node written before a crash (SIGKILL) is served
// after a restart on the same port, through the same kubeconfig
// credentials; anonymous requests are refused (RBAC is on).
func TestServerRestart(t *testing.T) {
	srv := kubeapitest.New(t)
	c := adminClient(t, srv)
	nodes := srv.URL() + "/api/v1/nodes"

	node := map[string]any{
		"apiVersion": "v1", "kind": "Node",
		"metadata": map[string]any{"name": "n1", "annotations": map[string]string{"flannel.alpha.coreos.com/public-ip": "172.30.250.11"}},
		"spec":     map[string]any{"podCIDR": "10.244.1.0/24", "podCIDRs": []string{"10.244.1.0/24"}},
	}
	code, created := do(t, c, http.MethodPost, nodes, node)
	if code != http.StatusCreated {
		t.Fatalf("create node: HTTP %d: %v", code, created)
	}
	uid := created["metadata"].(map[string]any)["uid"]

	kc, err := os.ReadFile(srv.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(kc), "server: "+srv.URL()+"\n") || !strings.Contains(string(kc), "client-certificate-data: ") {
		t.Fatalf("kubeconfig does not name %s with a client certificate:\n%s", srv.URL(), kc)
	}

	anon := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if code, _ := do(t, anon, http.MethodGet, nodes, nil); code != http.StatusUnauthorized && code != http.StatusForbidden {
		t.Fatalf("anonymous list nodes: HTTP %d, want 401 or 403", code)
	}

	pid := srv.PID()
	srv.Kill()
	if srv.PID() != 0 {
		t.Fatal("PID after Kill is not 0")
	}
	if err := srv.Ready(context.Background()); err == nil {
		t.Fatal("server ready after Kill")
	}
	srv.Restart()
	if srv.PID() == 0 || srv.PID() == pid {
		t.Fatalf("PID after restart %d (before %d): want a new process", srv.PID(), pid)
	}
	code, got := do(t, adminClient(t, srv), http.MethodGet, nodes+"/n1", nil)
	if code != http.StatusOK {
		t.Fatalf("get node after restart: HTTP %d: %v", code, got)
	}
	if u := got["metadata"].(map[string]any)["uid"]; u != uid {
		t.Fatalf("node uid after restart %v, want %v", u, uid)
	}
	if cidr := got["spec"].(map[string]any)["podCIDR"]; cidr != "10.244.1.0/24" {
		t.Fatalf("podCIDR after restart %v", cidr)
	}

	if err := srv.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	log, _ := os.ReadFile(srv.LogPath())
	t.Logf("log marks:\n%s", grepMarks(string(log)))
	if n := strings.Count(string(log), "=== "); n < 4 {
		t.Fatalf("log has %d start/exit marks, want 4 (two runs):\n%s", n, log)
	}
}

// TestStartBadEtcd: a server whose etcd is not there fails Start with the
// log's tail in the error, within the ready timeout.
func TestStartBadEtcd(t *testing.T) {
	bin := kubeapitest.Binary(t)
	_, err := kubeapi.Start(context.Background(), kubeapi.Options{
		Binary:       bin,
		EtcdURL:      "http://127.0.0.1:1", // nothing listens on port 1
		Dir:          t.TempDir(),
		ReadyTimeout: 8 * time.Second,
	})
	if err == nil {
		t.Fatal("Start with no etcd succeeded")
	}
	if !strings.Contains(err.Error(), "not ready") || !strings.Contains(err.Error(), "apiserver.log") {
		t.Fatalf("error does not say what failed and where the log is: %v", err)
	}
}

// TestStartOptions: missing options are refused before anything runs.
func TestStartOptions(t *testing.T) {
	for _, o := range []kubeapi.Options{
		{EtcdURL: "http://127.0.0.1:2379", Dir: t.TempDir()},
		{Binary: "/bin/true", Dir: t.TempDir()},
		{Binary: "/bin/true", EtcdURL: "http://127.0.0.1:2379"},
	} {
		if _, err := kubeapi.Start(context.Background(), o); err == nil || !strings.Contains(err.Error(), "required") {
			t.Errorf("Start(%+v): %v, want a 'required' error", o, err)
		}
	}
}

// TestBuildCached: a second Build is the same binary, found in the cache.
func TestBuildCached(t *testing.T) {
	first := kubeapitest.Binary(t)
	again, err := kubeapi.Build(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if again != first {
		t.Fatalf("second Build %s, want the cached %s", again, first)
	}
	out, err := execOutput(first, "--help")
	if !strings.Contains(out, "-etcd-servers") {
		t.Fatalf("%s --help: %v\n%s", first, err, out)
	}
}

func execOutput(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var buf bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	return buf.String(), fmt.Errorf("run: %v", err)
}

func grepMarks(log string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.HasPrefix(l, "=== ") {
			if len(l) > 80 {
				l = l[:80]
			}
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
