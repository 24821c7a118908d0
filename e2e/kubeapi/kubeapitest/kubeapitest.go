// Package kubeapitest gives a test a real kube-apiserver over a real etcd:
// the project's embedded etcd (package leasetest) on loopback and the
// kube-apiserver-test binary of package kubeapi on a free loopback port,
// both stopped by t.Cleanup. A test skips, saying why, only when the binary
// cannot be built here (no go command or no module downloads); any other
// failure fails the test.
package kubeapitest

import (
	"context"
	"errors"
	"sync"
	"testing"

	"overlay/e2e/kubeapi"
	"overlay/lease/leasetest"
)

// Server is a kube-apiserver with its etcd, owned by one test.
type Server struct {
	*kubeapi.Server
	Etcd *leasetest.Server
	t    testing.TB
}

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// Binary builds (or finds in the cache) the kube-apiserver-test binary
// once per test process; it skips t when that cannot be done here.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildBin, buildErr = kubeapi.Build(context.Background(), "")
	})
	if errors.Is(buildErr, kubeapi.ErrUnavailable) {
		t.Skipf("kubeapitest: no real kube-apiserver on this machine: %v", buildErr)
	}
	if buildErr != nil {
		t.Fatalf("kubeapitest: %v", buildErr)
	}
	return buildBin
}

// New starts etcd and a kube-apiserver over it, and stops both in
// t.Cleanup (the apiserver first).
func New(t testing.TB) *Server {
	t.Helper()
	bin := Binary(t)
	etcd := leasetest.NewServer(t)
	srv, err := kubeapi.Start(context.Background(), kubeapi.Options{
		Binary:  bin,
		EtcdURL: etcd.ClientURL(),
		Dir:     t.TempDir(),
	})
	if err != nil {
		t.Fatalf("kubeapitest: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Errorf("kubeapitest: %v", err)
		}
	})
	return &Server{Server: srv, Etcd: etcd, t: t}
}

// Restart restarts a stopped or killed server on the same port and fails
// the test if it does not become ready.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.Server.Restart(context.Background()); err != nil {
		s.t.Fatalf("kubeapitest: %v", err)
	}
}
