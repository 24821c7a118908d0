package lease

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	"overlay/lease/internal/slogzap"
)

// DefaultDialTimeout bounds the first connection to etcd.
const DefaultDialTimeout = 5 * time.Second

// ClientOptions says how to reach etcd. The zero value is not usable:
// Endpoints is required.
type ClientOptions struct {
	// Endpoints are etcd client URLs such as https://10.0.0.1:2379.
	Endpoints []string
	// CAFile verifies the servers' certificates; CertFile and KeyFile are
	// the client certificate for servers that require one. Any of them
	// turns TLS on.
	CAFile, CertFile, KeyFile string
	// Username and Password authenticate against etcd's auth.
	Username, Password string
	// DialTimeout bounds dialing and the first authentication
	// (DefaultDialTimeout when 0).
	DialTimeout time.Duration
	// Logger receives the etcd client's warnings (nil: discard).
	Logger *slog.Logger
}

// reconnect replaces gRPC's default reconnection backoff, which grows to two
// minutes: after an etcd outage the agent should be back within seconds.
var reconnect = grpc.ConnectParams{
	Backoff:           grpcbackoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
	MinConnectTimeout: 5 * time.Second,
}

// TLSConfig loads and checks the TLS files of o. It returns nil, nil when no
// TLS file is set. Every error names the file and what is wrong with it.
func (o *ClientOptions) TLSConfig() (*tls.Config, error) {
	if o.CAFile == "" && o.CertFile == "" && o.KeyFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA file %s: no PEM certificate in it", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	switch {
	case o.CertFile != "" && o.KeyFile == "":
		return nil, fmt.Errorf("etcd client certificate %s given without a key file", o.CertFile)
	case o.CertFile == "" && o.KeyFile != "":
		return nil, fmt.Errorf("etcd client key %s given without a certificate file", o.KeyFile)
	case o.CertFile != "":
		for _, f := range []string{o.CertFile, o.KeyFile} {
			if _, err := os.ReadFile(f); err != nil {
				return nil, fmt.Errorf("etcd client certificate: %w", err)
			}
		}
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate %s / key %s: %w", o.CertFile, o.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// NewClient checks o (endpoints, TLS files) and only then connects to etcd.
// An unreadable or invalid TLS file is reported without dialing. With a
// username, the first authentication happens here and its failure is
// returned.
func NewClient(o ClientOptions) (*clientv3.Client, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	tlsCfg, err := o.TLSConfig()
	if err != nil {
		return nil, err
	}
	eps := make([]string, 0, len(o.Endpoints))
	for _, ep := range o.Endpoints {
		ep = strings.TrimSpace(ep)
		if ep == "" {
			continue
		}
		if strings.Contains(ep, "://") {
			u, err := url.Parse(ep)
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("etcd endpoint %q is not a URL such as https://10.0.0.1:2379", ep)
			}
			switch u.Scheme {
			case "http", "unix", "unixs":
			case "https":
				if tlsCfg == nil {
					tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
				}
			default:
				return nil, fmt.Errorf("etcd endpoint %q: scheme %q is not http or https", ep, u.Scheme)
			}
		}
		eps = append(eps, ep)
	}
	if len(eps) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	if (o.Username == "") != (o.Password == "") && o.Username == "" {
		return nil, errors.New("etcd: password given without a username")
	}
	dt := o.DialTimeout
	if dt <= 0 {
		dt = DefaultDialTimeout
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   eps,
		TLS:         tlsCfg,
		Username:    o.Username,
		Password:    o.Password,
		DialTimeout: dt,
		// Keepalive pings detect a dead connection in seconds, so that
		// watches and lease renewals fail over rather than hang.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               slogzap.New(o.Logger, zapcore.ErrorLevel),
		DialOptions:          []grpc.DialOption{grpc.WithConnectParams(reconnect)},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(eps, ","), err)
	}
	return cli, nil
}
