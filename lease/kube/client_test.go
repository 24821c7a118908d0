package kube

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestRESTConfig(t *testing.T) {
	if _, err := (ClientOptions{Getenv: env(nil)}).RESTConfig(); !errors.Is(err, ErrNoAPIServer) {
		t.Errorf("no flags, not in a pod: %v, want ErrNoAPIServer", err)
	}
	cfg, err := ClientOptions{APIURL: "http://127.0.0.1:6443", Getenv: env(nil)}.RESTConfig()
	if err != nil || cfg.Host != "http://127.0.0.1:6443" {
		t.Errorf("--kube-api-url alone: %+v, %v", cfg, err)
	}
	for _, bad := range []string{"127.0.0.1:6443", "ftp://x", "http://"} {
		if _, err := (ClientOptions{APIURL: bad, Getenv: env(nil)}).RESTConfig(); err == nil {
			t.Errorf("--kube-api-url %q accepted", bad)
		}
	}
	if _, err := (ClientOptions{Kubeconfig: filepath.Join(t.TempDir(), "none"), Getenv: env(nil)}).RESTConfig(); err == nil {
		t.Error("a missing kubeconfig accepted")
	}
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://10.0.0.1:6443
    insecure-skip-tls-verify: true
users:
- name: u
  user:
    token: abc
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err = ClientOptions{Kubeconfig: kc, Getenv: env(nil)}.RESTConfig()
	if err != nil || cfg.Host != "https://10.0.0.1:6443" || cfg.BearerToken != "abc" {
		t.Errorf("kubeconfig: %+v, %v", cfg, err)
	}
	cfg, err = ClientOptions{Kubeconfig: kc, APIURL: "https://10.0.0.2:6443", Getenv: env(nil)}.RESTConfig()
	if err != nil || cfg.Host != "https://10.0.0.2:6443" || cfg.BearerToken != "abc" {
		t.Errorf("kubeconfig with --kube-api-url: %+v, %v", cfg, err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("clusters: [[["), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := (ClientOptions{Kubeconfig: bad, Getenv: env(nil)}).RESTConfig(); err == nil {
		t.Error("a malformed kubeconfig accepted")
	}
	// In a pod without a service account token the error says so.
	_, err = ClientOptions{Getenv: env(map[string]string{"KUBERNETES_SERVICE_HOST": "10.96.0.1"})}.RESTConfig()
	if err == nil || !strings.Contains(err.Error(), "in-cluster") {
		t.Errorf("in-cluster without a token: %v", err)
	}
}

func TestCheckNodeEnv(t *testing.T) {
	for _, tc := range []struct {
		env map[string]string
		ok  bool
	}{
		{map[string]string{"NODE_NAME": "n1"}, true},
		{map[string]string{"POD_NAME": "p", "POD_NAMESPACE": "kube-system"}, true},
		{map[string]string{"POD_NAME": "p"}, false},
		{nil, false},
	} {
		if err := CheckNodeEnv(env(tc.env)); (err == nil) != tc.ok {
			t.Errorf("CheckNodeEnv(%v) = %v", tc.env, err)
		}
	}
}

func TestReadNetConf(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// kube-flannel.yml's net-conf.json.
	cfg, err := ReadNetConf(write("ok", "{\n  \"Network\": \"10.244.0.0/16\",\n  \"EnableNFTables\": false,\n  \"Backend\": {\n    \"Type\": \"vxlan\"\n  }\n}\n"))
	if err != nil || cfg.Network.String() != "10.244.0.0/16" || cfg.Backend.VNI != 1 || cfg.Backend.Port != 8472 {
		t.Errorf("kube-flannel's net-conf.json: %+v, %v", cfg, err)
	}
	for name, s := range map[string]string{
		"json":    `{"Network":`,
		"backend": `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`,
		"network": `{"Network":"10.244.0.0/33","Backend":{"Type":"vxlan"}}`,
	} {
		if _, err := ReadNetConf(write(name, s)); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, name)) {
			t.Errorf("bad net-conf.json %s: %v (want an error naming the file)", name, err)
		}
	}
	if _, err := ReadNetConf(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing net-conf.json accepted")
	}
}
