// Package leasetest runs a real etcd server inside a test process, for the
// tests of lease, e2e and cmd: loopback ports, a temporary data directory,
// quiet logs, Stop and Restart on the same directory and ports for outage
// tests, a TCP Proxy that can cut one client off from etcd (a partition),
// and a throwaway CA with server and client certificates for TLS tests.
// Everything it starts is stopped by t.Cleanup.
package leasetest

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	"overlay/lease/etcdembed"
)

// Options configure NewServerWith. The zero value is a plain-HTTP server.
type Options struct {
	// Certs, when set, makes the server speak TLS on its client URL and
	// require client certificates signed by Certs.CAFile.
	Certs *Certs
}

// Server is an embedded etcd owned by one test. Its methods may be called
// from any goroutine of the test.
type Server struct {
	t    testing.TB
	opts etcdembed.Options
	tls  *Certs

	mu  sync.Mutex // guards srv
	srv *etcdembed.Server
}

// NewServer starts a plain-HTTP etcd on loopback; see NewServerWith.
func NewServer(t testing.TB) *Server { return NewServerWith(t, Options{}) }

// NewServerWith starts an etcd on 127.0.0.1 with free ports and a t.TempDir
// data directory, and stops it in t.Cleanup.
func NewServerWith(t testing.TB, o Options) *Server {
	t.Helper()
	dir := t.TempDir()
	scheme := "http"
	if o.Certs != nil {
		scheme = "https"
	}
	var lastErr error
	// A free port may be taken by someone else between probing and
	// binding; a few attempts with fresh ports make that harmless.
	for range 5 {
		cp, pp := FreePort(t), FreePort(t)
		s := &Server{t: t, tls: o.Certs, opts: etcdembed.Options{
			Dir:           dir,
			ClientURL:     fmt.Sprintf("%s://127.0.0.1:%d", scheme, cp),
			PeerURL:       fmt.Sprintf("http://127.0.0.1:%d", pp),
			UnsafeNoFsync: true,
		}}
		if o.Certs != nil {
			s.opts.CertFile, s.opts.KeyFile = o.Certs.ServerCertFile, o.Certs.ServerKeyFile
			s.opts.TrustedCAFile, s.opts.ClientCertAuth = o.Certs.CAFile, true
		}
		srv, err := etcdembed.Start(context.Background(), s.opts)
		if err != nil {
			lastErr = err
			continue
		}
		s.srv = srv
		t.Cleanup(s.Stop)
		return s
	}
	t.Fatalf("leasetest: cannot start etcd: %v", lastErr)
	return nil
}

// ClientURL returns the client URL, e.g. http://127.0.0.1:40123.
func (s *Server) ClientURL() string { return s.opts.ClientURL }

// Endpoints returns the client URL as an endpoint list.
func (s *Server) Endpoints() []string { return []string{s.opts.ClientURL} }

// Dir returns the data directory.
func (s *Server) Dir() string { return s.opts.Dir }

// Client returns a new client of the server (TLS with the client
// certificate when the server has TLS), closed in t.Cleanup.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return NewClient(t, s.Endpoints(), s.tls)
}

// NewClient returns a client for endpoints, with certs' client certificate
// when certs is not nil, closed in t.Cleanup.
func NewClient(t testing.TB, endpoints []string, certs *Certs) *clientv3.Client {
	t.Helper()
	cfg := clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          10 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
		DialOptions:          []grpc.DialOption{grpc.WithConnectParams(reconnect)},
	}
	if certs != nil {
		tc, err := certs.ClientTLS()
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatalf("leasetest: etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// reconnect makes test clients reconnect within a second or two after an
// outage, instead of gRPC's default backoff of up to two minutes.
var reconnect = grpc.ConnectParams{
	Backoff:           grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
	MinConnectTimeout: 2 * time.Second,
}

// Stop stops the server; it may be restarted. Stopping twice is harmless.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.srv.Close()
		s.srv = nil
	}
}

// Restart starts a stopped server again on the same data directory and
// ports (retrying for a while if a port is still held).
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return
	}
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		var srv *etcdembed.Server
		if srv, err = etcdembed.Start(context.Background(), s.opts); err == nil {
			s.srv = srv
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("leasetest: restart etcd: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("leasetest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
