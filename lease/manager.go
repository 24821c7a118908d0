package lease

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"overlay/lease/internal/retry"
)

// Defaults of Options.
const (
	// DefaultPrefix is flannel's default etcd prefix.
	DefaultPrefix = "/coreos.com/network"
	// DefaultTTL is the lifetime of a subnet lease, as in flannel.
	DefaultTTL = 24 * time.Hour
	// DefaultRenewMargin is how long before expiry a lease is renewed
	// (flannel's --subnet-lease-renew-margin default, 60 minutes).
	DefaultRenewMargin = 60 * time.Minute
)

// Errors callers act on.
var (
	// ErrNoFreeSubnet means every subnet in [SubnetMin, SubnetMax] is
	// leased or reserved. Delete stale leases (overlay leases delete) or
	// widen the network config.
	ErrNoFreeSubnet = errors.New("no free subnet left in the network")
	// ErrNotFound means no lease matches: nothing to delete.
	ErrNotFound = errors.New("no such lease")
	// ErrNoConfig means the config key does not exist; write one with
	// overlay config set.
	ErrNoConfig = errors.New("network config key does not exist")
)

// Options configure a Manager. The zero value gives flannel's defaults.
type Options struct {
	// Prefix is the etcd prefix (DefaultPrefix when empty). The config is
	// at <Prefix>/config and leases at <Prefix>/subnets/.
	Prefix string
	// Logger receives the manager's logs (nil: discard).
	Logger *slog.Logger
	// TTL is the lifetime of a new lease (DefaultTTL when 0). Tests shorten
	// it; etcd rounds it up to its minimum TTL and to whole seconds.
	TTL time.Duration
	// RenewMargin is how long before expiry Keep renews (DefaultRenewMargin
	// when 0). It must be shorter than TTL.
	RenewMargin time.Duration
	// MaxBackoff caps the delay between retries against etcd (30 s when 0).
	MaxBackoff time.Duration
}

// Manager reads the network config and acquires, keeps, watches, lists and
// deletes subnet leases below one prefix. Its only mutable state is the
// malformed-peer counter: all its methods are safe for concurrent use, and
// one Manager may serve Keep and Watch at once. The zero value is not
// usable; call New.
type Manager struct {
	malformed  atomic.Uint64 // peer records Watch skipped (MalformedPeers)
	cli        *clientv3.Client
	prefix     string
	configKey  string
	subnets    string // <prefix>/subnets/
	log        *slog.Logger
	ttl        time.Duration
	margin     time.Duration
	minBackoff time.Duration
	maxBackoff time.Duration
}

// New returns a Manager using cli, which the caller keeps and closes.
func New(cli *clientv3.Client, o Options) (*Manager, error) {
	if cli == nil {
		return nil, errors.New("lease: nil etcd client")
	}
	p := strings.TrimRight(o.Prefix, "/")
	if o.Prefix == "" {
		p = DefaultPrefix
	}
	m := &Manager{
		cli:        cli,
		prefix:     p,
		configKey:  p + "/config",
		subnets:    p + "/subnets/",
		log:        o.Logger,
		ttl:        cmp.Or(o.TTL, DefaultTTL),
		margin:     cmp.Or(o.RenewMargin, DefaultRenewMargin),
		minBackoff: 100 * time.Millisecond,
		maxBackoff: cmp.Or(o.MaxBackoff, 30*time.Second),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.ttl < time.Second {
		return nil, fmt.Errorf("lease: TTL %v is shorter than etcd's 1 s granularity", m.ttl)
	}
	if m.margin <= 0 || m.margin >= m.ttl {
		return nil, fmt.Errorf("lease: renew margin %v must be positive and shorter than the lease TTL %v", m.margin, m.ttl)
	}
	return m, nil
}

// ConfigKey returns the etcd key of the network config.
func (m *Manager) ConfigKey() string { return m.configKey }

// SubnetsPrefix returns the etcd prefix of lease keys (ending in "/").
func (m *Manager) SubnetsPrefix() string { return m.subnets }

// Config returns the network config, waiting (and logging which key it waits
// for) while the key does not exist. It returns an error naming the key when
// the config is invalid, and ctx.Err() when ctx ends first. etcd errors are
// retried with capped backoff.
func (m *Manager) Config(ctx context.Context) (*Config, error) {
	bo := m.backoff()
	logged := false
	for {
		resp, err := m.cli.Get(ctx, m.configKey)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if isPermanent(err) {
				return nil, fmt.Errorf("read config %s: %w", m.configKey, err)
			}
			m.log.Warn("cannot read the network config, retrying", "key", m.configKey, "err", err)
			if !bo.Wait(ctx) {
				return nil, ctx.Err()
			}
			continue
		}
		if len(resp.Kvs) > 0 {
			cfg, err := ParseConfig(resp.Kvs[0].Value)
			if err != nil {
				return nil, fmt.Errorf("network config %s: %w", m.configKey, err)
			}
			return cfg, nil
		}
		if !logged {
			m.log.Info("waiting for the network config key", "key", m.configKey)
			logged = true
		}
		// Wait for the key to be written, from the revision we read at.
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := m.cli.Watch(wctx, m.configKey, clientv3.WithRev(resp.Header.Revision+1), clientv3.WithFilterDelete())
		healthy := false
		select {
		case wr, ok := <-wch:
			healthy = ok && wr.Err() == nil && len(wr.Events) > 0
		case <-ctx.Done():
		}
		cancel()
		for range wch { // drain so the watcher goroutine is released
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if healthy {
			bo.Reset()
		} else if !bo.Wait(ctx) {
			return nil, ctx.Err()
		}
	}
}

// RawConfig returns the config key's value as stored, or ErrNoConfig.
func (m *Manager) RawConfig(ctx context.Context) ([]byte, error) {
	resp, err := m.cli.Get(ctx, m.configKey)
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", m.configKey, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%s: %w", m.configKey, ErrNoConfig)
	}
	return resp.Kvs[0].Value, nil
}

// SetConfig validates data with ParseConfig and stores it unchanged (fields
// overlay does not read, such as flannel's DirectRouting, are kept for the
// flannel nodes of the cluster).
func (m *Manager) SetConfig(ctx context.Context, data []byte) (*Config, error) {
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("network config: %w", err)
	}
	if _, err := m.cli.Put(ctx, m.configKey, string(data)); err != nil {
		return nil, fmt.Errorf("write config %s: %w", m.configKey, err)
	}
	return cfg, nil
}

// List returns every lease below the prefix, sorted by subnet, with
// Expiration filled in from etcd (zero for reservations). Keys or values
// that do not parse are skipped with a warning naming the key.
func (m *Manager) List(ctx context.Context) ([]Lease, error) {
	st, err := m.list(ctx)
	if err != nil {
		return nil, err
	}
	exp := make(map[clientv3.LeaseID]time.Time)
	for i := range st.leases {
		l := &st.leases[i]
		if l.EtcdLease == 0 {
			continue
		}
		t, ok := exp[l.EtcdLease]
		if !ok {
			resp, err := m.cli.TimeToLive(ctx, l.EtcdLease)
			if err != nil {
				return nil, fmt.Errorf("lease %s: time to live: %w", l.Key, err)
			}
			if resp.TTL > 0 {
				t = time.Now().Add(time.Duration(resp.TTL) * time.Second)
			}
			exp[l.EtcdLease] = t
		}
		l.Expiration = t
	}
	return st.leases, nil
}

// Delete removes the lease whose IPv4 or IPv6 subnet is sn (host bits
// ignored), reservation or not, and revokes the etcd lease it was bound to
// so that none is left behind. A running node whose lease is deleted
// acquires a new one. It returns ErrNotFound when no key matches.
func (m *Manager) Delete(ctx context.Context, sn netip.Prefix) error {
	sn = sn.Masked()
	resp, err := m.cli.Get(ctx, m.subnets, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list %s: %w", m.subnets, err)
	}
	found := false
	for _, kv := range resp.Kvs {
		v4, v6, err := ParseSubnetKey(strings.TrimPrefix(string(kv.Key), m.subnets))
		if err != nil || (v4 != sn && v6 != sn) {
			continue
		}
		found = true
		key := string(kv.Key)
		tr, err := m.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(key)).Commit()
		if err != nil {
			return fmt.Errorf("delete %s: %w", key, err)
		}
		if !tr.Succeeded {
			return fmt.Errorf("delete %s: the key changed meanwhile; list again", key)
		}
		if kv.Lease != 0 {
			if _, err := m.cli.Revoke(ctx, clientv3.LeaseID(kv.Lease)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return fmt.Errorf("delete %s: revoke etcd lease %x: %w", key, kv.Lease, err)
			}
		}
		m.log.Info("deleted lease", "key", key)
	}
	if !found {
		return fmt.Errorf("subnet %s: %w", sn, ErrNotFound)
	}
	return nil
}

// state is one consistent read of the subnets prefix.
type state struct {
	rev    int64
	leases []Lease
	// used holds the subnets of every parseable key, including keys with a
	// malformed value: they are occupied whatever their content.
	used []netip.Prefix
}

func (m *Manager) list(ctx context.Context) (state, error) {
	resp, err := m.cli.Get(ctx, m.subnets, clientv3.WithPrefix())
	if err != nil {
		return state{}, fmt.Errorf("list %s: %w", m.subnets, err)
	}
	st := state{rev: resp.Header.Revision, leases: make([]Lease, 0, len(resp.Kvs))}
	for _, kv := range resp.Kvs {
		v4, v6, _ := ParseSubnetKey(strings.TrimPrefix(string(kv.Key), m.subnets))
		if v4.IsValid() {
			st.used = append(st.used, v4)
		}
		if v6.IsValid() {
			st.used = append(st.used, v6)
		}
		l, ok := m.decode(kv)
		if ok {
			st.leases = append(st.leases, l)
		}
	}
	sortLeases(st.leases)
	return st, nil
}

// decode parses one KV, logging a warning naming the key when it is bad.
func (m *Manager) decode(kv *mvccpb.KeyValue) (Lease, bool) {
	key := string(kv.Key)
	l, err := decodeLease(strings.TrimPrefix(key, m.subnets), kv.Value)
	if err != nil {
		m.log.Warn("skipping malformed lease", "key", key, "err", err)
		return Lease{}, false
	}
	l.Key = key
	l.EtcdLease = clientv3.LeaseID(kv.Lease)
	l.ModRevision = kv.ModRevision
	return l, true
}

func sortLeases(ls []Lease) {
	slices.SortFunc(ls, func(a, b Lease) int {
		if c := a.Subnet.Addr().Compare(b.Subnet.Addr()); c != 0 {
			return c
		}
		if c := a.IPv6Subnet.Addr().Compare(b.IPv6Subnet.Addr()); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
}

// isPermanent reports errors that retrying cannot fix.
func isPermanent(err error) bool {
	return errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrAuthFailed) ||
		errors.Is(err, rpctypes.ErrAuthNotEnabled) || errors.Is(err, rpctypes.ErrUserEmpty) ||
		errors.Is(err, rpctypes.ErrRequestTooLarge)
}

func (m *Manager) backoff() *retry.Backoff {
	return &retry.Backoff{Min: m.minBackoff, Max: m.maxBackoff}
}
