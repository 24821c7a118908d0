package lease

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"overlay/lease/leasetest"
)

func TestNewClientChecksFilesBeforeDialing(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	certs := leasetest.GenerateCerts(t, "overlay")
	// 192.0.2.1 (TEST-NET-1) is never dialed: every case fails first.
	ep := []string{"https://192.0.2.1:2379"}
	for _, tt := range []struct {
		o    ClientOptions
		want string
	}{
		{ClientOptions{}, "no endpoints"},
		{ClientOptions{Endpoints: []string{" "}}, "no endpoints"},
		{ClientOptions{Endpoints: []string{"ftp://x:1"}}, `scheme "ftp"`},
		{ClientOptions{Endpoints: ep, CAFile: filepath.Join(dir, "missing.pem")}, "missing.pem"},
		{ClientOptions{Endpoints: ep, CAFile: garbage}, "no PEM certificate"},
		{ClientOptions{Endpoints: ep, CertFile: certs.ClientCertFile}, "without a key"},
		{ClientOptions{Endpoints: ep, KeyFile: certs.ClientKeyFile}, "without a certificate"},
		{ClientOptions{Endpoints: ep, CertFile: certs.ClientCertFile, KeyFile: filepath.Join(dir, "nokey.pem")}, "nokey.pem"},
		{ClientOptions{Endpoints: ep, CertFile: certs.ClientCertFile, KeyFile: certs.ServerKeyFile}, "private key does not match"},
		{ClientOptions{Endpoints: ep, Password: "x"}, "without a username"},
	} {
		start := time.Now()
		cli, err := NewClient(tt.o)
		if err == nil {
			cli.Close()
			t.Errorf("NewClient(%+v) succeeded", tt.o)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewClient(%+v): %v, want it to mention %q", tt.o, err, tt.want)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("NewClient(%+v) took %v: it dialed", tt.o, d)
		}
	}
}

func TestClientTLS(t *testing.T) {
	certs := leasetest.GenerateCerts(t, "overlay")
	srv := leasetest.NewServerWith(t, leasetest.Options{Certs: certs})
	cli, err := NewClient(ClientOptions{Endpoints: srv.Endpoints(), CAFile: certs.CAFile,
		CertFile: certs.ClientCertFile, KeyFile: certs.ClientKeyFile, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	putConfig(t, cli, vxlanConfig)
	ctx := testCtx(t)
	l, err := newManager(t, cli, Options{}).Acquire(ctx, node(11))
	if err != nil {
		t.Fatal(err)
	}
	if !l.Subnet.IsValid() {
		t.Fatalf("lease %+v", l)
	}
	// Without a client certificate the server refuses.
	nocert, err := NewClient(ClientOptions{Endpoints: srv.Endpoints(), CAFile: certs.CAFile, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer nocert.Close()
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := nocert.Get(sctx, "x"); err == nil {
		t.Error("a client without a certificate could read")
	}
}

func TestClientAuth(t *testing.T) {
	srv := leasetest.NewServer(t)
	root := srv.Client(t)
	ctx := testCtx(t)
	steps := []func() error{
		func() error { _, err := root.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := root.RoleAdd(ctx, "overlay"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "overlay", testPrefix+"/", clientv3.GetPrefixRangeEnd(testPrefix+"/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := root.UserAdd(ctx, "overlay", "s3cret"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "overlay", "overlay"); return err },
		func() error { _, err := root.Put(ctx, testPrefix+"/config", vxlanConfig); return err },
		func() error { _, err := root.AuthEnable(ctx); return err },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("auth setup step %d: %v", i, err)
		}
	}
	cli, err := NewClient(ClientOptions{Endpoints: srv.Endpoints(), Username: "overlay", Password: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	m := newManager(t, cli, Options{})
	l, err := m.Acquire(ctx, node(11))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, l.Subnet); err != nil {
		t.Fatal(err)
	}
	if _, err := NewClient(ClientOptions{Endpoints: srv.Endpoints(), Username: "overlay", Password: "wrong"}); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Errorf("wrong password: %v, want ErrAuthFailed", err)
	}
	// A prefix the user may not read: a clear, immediate error, not a wait.
	other := newManager(t, cli, Options{Prefix: "/elsewhere/network"})
	if _, err := other.Config(ctx); !errors.Is(err, rpctypes.ErrPermissionDenied) || !strings.Contains(err.Error(), "/elsewhere/network/config") {
		t.Errorf("Config on a forbidden prefix: %v", err)
	}
}
