// Package etcdembed runs a single-member etcd server inside the calling
// process, for `overlay demo` and for tests (see package leasetest).
//
// It wraps go.etcd.io/etcd/server/v3/embed with the few settings overlay
// needs: one data directory, one client URL, one peer URL, optional TLS for
// clients, and etcd's zap logs forwarded to a *slog.Logger at warning level
// and above. A server restarted on the same directory and URLs keeps its
// data and revisions, so watchers resume where they stopped.
package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"

	"overlay/lease/internal/slogzap"
)

// Options configure Start. Dir and ClientURL are required.
type Options struct {
	// Name is the member name ("overlay" when empty).
	Name string
	// Dir is the data directory; it is created if missing.
	Dir string
	// ClientURL is where clients connect, e.g. http://172.30.250.1:2379
	// (https:// with CertFile and KeyFile).
	ClientURL string
	// PeerURL is the raft peer URL; a single member still listens on it.
	// Default: the client URL's host with port 2380 (loopback ports must
	// be given explicitly when several servers share a host).
	PeerURL string
	// CertFile and KeyFile serve TLS to clients; TrustedCAFile together
	// with ClientCertAuth requires client certificates signed by that CA.
	CertFile, KeyFile, TrustedCAFile string
	ClientCertAuth                   bool
	// Logger receives etcd's warnings and errors (nil: discard).
	Logger *slog.Logger
	// UnsafeNoFsync skips fsync: fast, for tests only.
	UnsafeNoFsync bool
	// StartTimeout bounds the wait for the server to be ready (30 s when 0).
	StartTimeout time.Duration
}

// Server is a running embedded etcd. Its methods are safe for concurrent
// use; Close is idempotent.
type Server struct {
	e         *embed.Etcd
	clientURL string
	once      sync.Once
}

// Start starts etcd and returns once it serves clients, or an error. ctx
// bounds the start only; stop the server with Close.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Dir == "" || o.ClientURL == "" {
		return nil, errors.New("etcdembed: Dir and ClientURL are required")
	}
	cu, err := url.Parse(o.ClientURL)
	if err != nil || cu.Host == "" {
		return nil, fmt.Errorf("etcdembed: client URL %q is not a URL such as http://127.0.0.1:2379", o.ClientURL)
	}
	pu := &url.URL{Scheme: "http", Host: cu.Hostname() + ":2380"}
	if o.PeerURL != "" {
		if pu, err = url.Parse(o.PeerURL); err != nil || pu.Host == "" {
			return nil, fmt.Errorf("etcdembed: peer URL %q is not a URL such as http://127.0.0.1:2380", o.PeerURL)
		}
	}
	cfg := embed.NewConfig()
	cfg.Name = o.Name
	if cfg.Name == "" {
		cfg.Name = "overlay"
	}
	cfg.Dir = o.Dir
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.ClientTLSInfo.CertFile = o.CertFile
	cfg.ClientTLSInfo.KeyFile = o.KeyFile
	cfg.ClientTLSInfo.TrustedCAFile = o.TrustedCAFile
	cfg.ClientTLSInfo.ClientCertAuth = o.ClientCertAuth
	cfg.UnsafeNoFsync = o.UnsafeNoFsync
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(slogzap.New(o.Logger, zapcore.WarnLevel))
	cfg.Logger = "zap"
	// No metrics or gateway listeners beyond the client URL.
	cfg.EnableGRPCGateway = false

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdembed: start: %w", err)
	}
	timeout := o.StartTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcdembed: start: %w", err)
	case <-t.C:
		e.Close()
		return nil, fmt.Errorf("etcdembed: not ready after %v", timeout)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return &Server{e: e, clientURL: cu.String()}, nil
}

// ClientURL returns the URL clients connect to.
func (s *Server) ClientURL() string { return s.clientURL }

// Err returns a channel that delivers a fatal server error.
func (s *Server) Err() <-chan error { return s.e.Err() }

// Close stops the server and waits until it has released its listeners and
// data directory.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.e.Close()
	})
	return nil
}
