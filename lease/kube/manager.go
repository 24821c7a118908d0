package kube

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"overlay/lease"
	"overlay/lease/internal/retry"
)

// Defaults of Options.
const (
	// DefaultResync is how often the informers replay their store, as in
	// flanneld (5 minutes): a lost update is repaired by then at the latest.
	DefaultResync = 5 * time.Minute
	// DefaultPollInterval is how often Acquire looks at the Node again
	// while it does not exist or has no pod CIDR.
	DefaultPollInterval = 2 * time.Second
	// waitLogEvery is how often Acquire repeats its "waiting" line.
	waitLogEvery = 30 * time.Second
	// warnEvery is how often a malformed Node is warned about by name;
	// further versions within it are logged at debug level.
	warnEvery = time.Minute
	// rpcTimeout bounds one API call made outside the informers.
	rpcTimeout = 10 * time.Second
)

// Options configure a Manager.
type Options struct {
	// Client reaches the API server (required); see NewClient.
	Client Client
	// NodeName is this node's Node (required); see NodeName.
	NodeName string
	// Prefix is the annotation prefix (DefaultPrefix when empty).
	Prefix string
	// Config is the network config, parsed from net-conf.json (required).
	Config *lease.Config
	// SetNodeNetworkUnavailable makes Keep set the Node's
	// NetworkUnavailable condition to False, reason FlannelIsUp, as
	// flanneld does with --set-node-network-unavailable (its default).
	SetNodeNetworkUnavailable bool
	// Logger receives the manager's logs (nil: discard).
	Logger *slog.Logger
	// Resync is the informers' resync period (DefaultResync when 0).
	Resync time.Duration
	// PollInterval is Acquire's wait between looks at the Node
	// (DefaultPollInterval when 0).
	PollInterval time.Duration
	// MaxBackoff caps the delay between retries of failed patches
	// (30 s when 0).
	MaxBackoff time.Duration
}

// Manager is the Kubernetes subnet manager: a node's subnet is its Node's
// spec.podCIDR(s), it publishes itself in flannel's annotations on its
// Node, and it learns its peers from the other Nodes. It is safe for
// concurrent use; Keep and Watch may run at once. The zero value is not
// usable; call New.
type Manager struct {
	nodes  Client
	node   string
	keys   Keys
	cfg    *lease.Config
	setNU  bool
	log    *slog.Logger
	resync time.Duration
	poll   time.Duration
	maxBo  time.Duration

	malformed atomic.Uint64 // MalformedPeers
}

var _ lease.SubnetManager = (*Manager)(nil)

// New returns a Manager. It checks its options and contacts nothing.
func New(o Options) (*Manager, error) {
	if o.Client == nil {
		return nil, errors.New("kube: nil client")
	}
	if o.NodeName == "" {
		return nil, errors.New("kube: empty node name")
	}
	if o.Config == nil {
		return nil, errors.New("kube: nil network config")
	}
	keys, err := NewKeys(cmp.Or(o.Prefix, DefaultPrefix))
	if err != nil {
		return nil, err
	}
	m := &Manager{
		nodes:  o.Client,
		node:   o.NodeName,
		keys:   keys,
		cfg:    o.Config,
		setNU:  o.SetNodeNetworkUnavailable,
		log:    o.Logger,
		resync: cmp.Or(o.Resync, DefaultResync),
		poll:   cmp.Or(o.PollInterval, DefaultPollInterval),
		maxBo:  cmp.Or(o.MaxBackoff, 30*time.Second),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.log = m.log.With("node", m.node)
	return m, nil
}

// Name implements lease.SubnetManager: "kube".
func (m *Manager) Name() string { return "kube" }

// NodeName is the Node this manager publishes on.
func (m *Manager) NodeName() string { return m.node }

// Keys are the annotation keys in use.
func (m *Manager) Keys() Keys { return m.keys }

// MalformedPeers implements lease.SubnetManager: how many versions of
// other Nodes Watch skipped because their flannel annotations or pod CIDRs
// could not be used.
func (m *Manager) MalformedPeers() uint64 { return m.malformed.Load() }

// Config implements lease.SubnetManager: the net-conf.json given to New.
func (m *Manager) Config(context.Context) (*lease.Config, error) { return m.cfg, nil }

// Acquire implements lease.SubnetManager. It reads this node's Node,
// waiting (with a log line every 30 s) while the Node does not exist or has
// no pod CIDR yet; checks that the pod CIDRs lie in the config's networks,
// which is an error otherwise; and publishes flannel's annotations on the
// Node, patching only those that differ. The node's public-ip-overwrite
// annotation, if set, is the lease's PublicIP (and so the public-ip
// published), as flanneld does. Authentication and permission errors are
// returned at once; others are retried until ctx ends.
func (m *Manager) Acquire(ctx context.Context, o lease.AcquireOptions) (*lease.Lease, error) {
	if err := m.checkAcquire(o); err != nil {
		return nil, err
	}
	var lastLog time.Time
	var lastMsg string
	waiting := func(msg string, args ...any) {
		if msg != lastMsg || time.Since(lastLog) >= waitLogEvery {
			m.log.Info(msg, args...)
			lastLog, lastMsg = time.Now(), msg
		}
	}
	bo := m.backoff()
	for {
		rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		n, err := m.nodes.GetNode(rctx, m.node)
		cancel()
		delay := m.poll
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case err == nil:
			v4, v6, err := PodCIDRs(n)
			if err != nil {
				return nil, fmt.Errorf("node %s: %w", m.node, err)
			}
			if !v4.IsValid() && !v6.IsValid() {
				waiting("waiting for the node to get a pod CIDR (spec.podCIDR is empty; the controller manager "+
					"assigns it with --allocate-node-cidrs, or set it by hand)", "poll", m.poll)
				break
			}
			if err := checkSubnets(m.cfg, v4, v6); err != nil {
				return nil, fmt.Errorf("node %s: %w", m.node, err)
			}
			l, problem := m.ownLease(n, v4, v6, o)
			if problem != "" {
				m.log.Warn("ignoring this node's public IP overwrite", "problem", problem)
			}
			if err := m.publish(ctx, n, &l); err != nil {
				if permanent(err) {
					return nil, fmt.Errorf("publish annotations on node %s: %w", m.node, err)
				}
				delay = bo.Next()
				m.log.Warn("cannot publish the flannel annotations, retrying", "in", delay, "err", err)
				break
			}
			m.log.Info("acquired the node's pod CIDR", "subnet", l.Subnet, "ipv6-subnet", l.IPv6Subnet,
				"public-ip", l.PublicIP, "public-ipv6", l.PublicIPv6, "overwritten", l.PublicIP != o.PublicIP || l.PublicIPv6 != o.PublicIPv6)
			return &l, nil
		case apierrors.IsNotFound(err):
			waiting("waiting for the node to be registered (no such Node yet)", "poll", m.poll)
		case permanent(err):
			return nil, fmt.Errorf("read node %s: %w", m.node, err)
		default:
			delay = bo.Next()
			m.log.Warn("cannot read the node, retrying", "in", delay, "err", err)
		}
		if !retry.Sleep(ctx, delay) {
			return nil, ctx.Err()
		}
	}
}

func (m *Manager) checkAcquire(o lease.AcquireOptions) error {
	if m.cfg.EnableIPv4 && (!o.PublicIP.Is4() || o.PublicIP.IsUnspecified()) {
		return fmt.Errorf("acquire: public IPv4 address %v is not usable (the config enables IPv4)", o.PublicIP)
	}
	if m.cfg.EnableIPv6 && (!o.PublicIPv6.Is6() || o.PublicIPv6.Is4In6() || o.PublicIPv6.IsUnspecified()) {
		return fmt.Errorf("acquire: public IPv6 address %v is not usable (the config enables IPv6)", o.PublicIPv6)
	}
	if len(o.VtepMAC) != 6 || o.VtepMAC[0]&1 != 0 {
		return fmt.Errorf("acquire: VtepMAC %v is not a unicast Ethernet MAC", o.VtepMAC)
	}
	return nil
}

// ownLease is this node's lease from its Node n: the pod CIDRs of the
// enabled families and the public addresses, an overwrite annotation
// winning over o's. problem says why an overwrite annotation was ignored.
func (m *Manager) ownLease(n *corev1.Node, v4, v6 netip.Prefix, o lease.AcquireOptions) (l lease.Lease, problem string) {
	l = lease.Lease{
		Key: "node/" + n.Name, Node: n.Name, BackendType: lease.BackendVXLAN,
		VNI: m.cfg.Backend.VNI, VtepMAC: o.VtepMAC,
	}
	var p4, p6 string
	if m.cfg.EnableIPv4 {
		l.Subnet = v4
		l.PublicIP, p4 = overwrite(n, m.keys.PublicIPOverwrite, o.PublicIP, true)
	}
	if m.cfg.EnableIPv6 {
		l.IPv6Subnet = v6
		l.PublicIPv6, p6 = overwrite(n, m.keys.PublicIPv6Overwrite, o.PublicIPv6, false)
		l.IPv6VtepMAC = o.VtepMAC
	}
	return l, p4 + p6
}

// overwrite returns the address in the Node's overwrite annotation key, if
// it holds a usable one, else def and, if the annotation is set, why it was
// not used.
func overwrite(n *corev1.Node, key string, def netip.Addr, want4 bool) (netip.Addr, string) {
	s := n.Annotations[key]
	if s == "" {
		return def, ""
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Is4() != want4 || a.Is4In6() || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
		return def, fmt.Sprintf("%s %q is not a usable address; ", key, s)
	}
	return a, ""
}

// publish patches l's annotations onto the Node n where they differ. The
// patch goes to the nodes/status subresource, as flanneld's does, so that
// kube-flannel's ClusterRole (nodes/status patch) is enough.
func (m *Manager) publish(ctx context.Context, n *corev1.Node, l *lease.Lease) error {
	want, err := m.keys.Annotations(m.cfg, Own{PublicIP: l.PublicIP, PublicIPv6: l.PublicIPv6, VNI: m.cfg.Backend.VNI, VtepMAC: l.VtepMAC})
	if err != nil {
		return err
	}
	body, err := patch(n.Annotations, want)
	if err != nil || body == nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	if _, err := m.nodes.PatchNodeStatus(rctx, m.node, body); err != nil {
		return err
	}
	m.log.Info("published the flannel annotations on the node", "patch", string(body))
	return nil
}

// setCondition sets the Node's NetworkUnavailable condition to False, as
// flanneld does once its network is up.
func (m *Manager) setCondition(ctx context.Context) error {
	now := metav1.Now()
	c := corev1.NodeCondition{
		Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse,
		Reason: "FlannelIsUp", Message: "overlay (flannel compatible) is running on this node",
		LastTransitionTime: now, LastHeartbeatTime: now,
	}
	raw, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{c}}})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	_, err = m.nodes.PatchNodeStatus(rctx, m.node, raw)
	return err
}

// Keep implements lease.SubnetManager. It first sets the NetworkUnavailable
// condition (when configured), then watches this node's Node until ctx
// ends: annotations removed or changed by someone else are published
// again; a changed public-ip-overwrite is adopted (the lease's PublicIP
// changes, onChange is called and the new public-ip published); a Node
// deleted and registered again gets its annotations and condition again,
// and if it came back with other pod CIDRs, onChange receives the new
// lease. API outages are retried; the lease never expires.
func (m *Manager) Keep(ctx context.Context, l *lease.Lease, o lease.AcquireOptions, onChange func(lease.Lease)) error {
	if onChange == nil {
		onChange = func(lease.Lease) {}
	}
	k := &keeper{m: m, o: o, cur: *l, onChange: onChange}
	sig := make(chan struct{}, 1)
	store, synced, wait := m.runInformer(ctx, fields.OneTermEqualSelector("metadata.name", m.node).String(), sig)
	defer wait()
	if !synced {
		return nil
	}

	bo := m.backoff()
	var retry <-chan time.Time
	var timer *time.Timer
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				if timer != nil {
					timer.Stop()
				}
				return nil
			case <-sig:
			case <-retry:
			}
		}
		obj, ok, _ := store.GetByKey(m.node)
		if !ok {
			if !k.gone {
				m.log.Warn("this node's Node was deleted; the datapath keeps running, waiting for it to be registered again")
				k.gone = true
			}
			continue
		}
		k.gone = false
		err := k.sync(ctx, obj.(*corev1.Node))
		if timer != nil {
			timer.Stop()
		}
		retry = nil
		switch {
		case err == nil:
			bo.Reset()
		case permanent(err):
			return fmt.Errorf("keep node %s: %w", m.node, err)
		default:
			d := bo.Next()
			m.log.Warn("cannot update the node, retrying", "in", d, "err", err)
			timer = time.NewTimer(d)
			retry = timer.C
		}
	}
}

// keeper is the state of one Keep call, owned by its goroutine.
type keeper struct {
	m        *Manager
	o        lease.AcquireOptions
	cur      lease.Lease
	onChange func(lease.Lease)
	uid      types.UID // of the Node whose condition was set
	gone     bool      // the Node was seen deleted
	problem  string    // the last problem logged, so it is logged once
}

// sync brings the Node n in line with the lease and the lease in line
// with n's pod CIDRs and overwrite annotations.
func (k *keeper) sync(ctx context.Context, n *corev1.Node) error {
	m := k.m
	v4, v6, err := PodCIDRs(n)
	if err == nil && !v4.IsValid() && !v6.IsValid() {
		err = errors.New("the Node has no pod CIDR")
	}
	if err == nil {
		err = checkSubnets(m.cfg, v4, v6)
	}
	if err != nil {
		// A Node registered again without a usable pod CIDR: keep the
		// lease we have and publish nothing until it has one.
		if msg := err.Error(); msg != k.problem {
			m.log.Warn("this node's pod CIDR is not usable; keeping the current lease", "err", err)
			k.problem = msg
		}
		return nil
	}
	next, problem := m.ownLease(n, v4, v6, k.o)
	if problem != k.problem {
		if problem != "" {
			m.log.Warn("ignoring this node's public IP overwrite", "problem", problem)
		}
		k.problem = problem
	}
	if !next.Equal(&k.cur) {
		m.log.Warn("this node's lease changed", "old", k.cur.String(), "new", next.String())
		k.cur = next
		k.onChange(k.cur)
	}
	if err := m.publish(ctx, n, &k.cur); err != nil {
		return err
	}
	if m.setNU && n.UID != k.uid {
		if err := m.setCondition(ctx); err != nil {
			return fmt.Errorf("set the NetworkUnavailable condition: %w", err)
		}
		k.uid = n.UID
		m.log.Info("set the node's NetworkUnavailable condition to False")
	}
	return nil
}

// runInformer runs m.informer(selector, sig) until ctx is done and waits
// for its first list. It returns the store, whether the list completed
// (false: ctx ended first), and wait, which returns once the informer has
// stopped after ctx is done.
func (m *Manager) runInformer(ctx context.Context, selector string, sig chan<- struct{}) (store cache.Store, synced bool, wait func()) {
	store, ctrl := m.informer(selector, sig)
	var wg sync.WaitGroup
	wg.Go(func() { ctrl.RunWithContext(ctx) })
	return store, cache.WaitForCacheSync(ctx.Done(), ctrl.HasSynced), wg.Wait
}

// informer returns a store of Nodes (all of them, or those the field
// selector names) kept by a controller the caller runs, and signals sig
// (without blocking) on every change.
func (m *Manager) informer(selector string, sig chan<- struct{}) (cache.Store, cache.Controller) {
	signal := func() {
		select {
		case sig <- struct{}{}:
		default:
		}
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			opts.FieldSelector = selector
			return m.nodes.ListNodes(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			opts.FieldSelector = selector
			return m.nodes.WatchNodes(ctx, opts)
		},
	}
	return cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &corev1.Node{},
		ResyncPeriod:  m.resync,
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { signal() },
			UpdateFunc: func(any, any) { signal() },
			DeleteFunc: func(any) { signal() },
		},
		// Only metadata.name, UID, resourceVersion, annotations, the pod
		// CIDRs and the conditions are read: drop the rest (managed
		// fields, images, ...) so that a large cluster costs little memory.
		Transform: func(obj any) (any, error) {
			n, ok := obj.(*corev1.Node)
			if !ok {
				return obj, nil
			}
			return &corev1.Node{
				ObjectMeta: metav1.ObjectMeta{
					Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Annotations: n.Annotations,
				},
				Spec:   corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
				Status: corev1.NodeStatus{Conditions: n.Status.Conditions},
			}, nil
		},
	})
}

// Watch implements lease.SubnetManager with an informer on all Nodes. Its
// first call of fn comes once the informer has listed the Nodes. Every
// change (add, annotation or pod CIDR change, delete, a relist after the
// watch expired or the API server came back) leads to a new snapshot,
// delivered if it differs from the last. Nodes without kube-subnet-manager
// "true" or with another backend-type are ignored; Nodes that claim a
// vxlan lease that cannot be used (bad JSON, bad MAC, another VNI, no
// public IP, a pod CIDR outside the network) are skipped with a warning at
// most once a minute per Node, and counted once per resourceVersion.
func (m *Manager) Watch(ctx context.Context, self netip.Addr, fn func([]lease.Lease)) error {
	sig := make(chan struct{}, 1)
	store, synced, wait := m.runInformer(ctx, "", sig)
	defer wait()
	if !synced {
		return nil
	}
	w := &watcher{m: m, self: self, fn: fn, nodes: map[string]nodeState{}}
	for {
		w.reconcile(store.List())
		select {
		case <-ctx.Done():
			return nil
		case <-sig:
		}
	}
}

// nodeState caches one Node's conversion, by resourceVersion.
type nodeState struct {
	rv       string
	lease    lease.Lease
	peer     bool
	bad      bool      // malformed
	lastWarn time.Time // of a malformed version
}

// watcher is the state of one Watch call, owned by its goroutine.
type watcher struct {
	m         *Manager
	self      netip.Addr
	fn        func([]lease.Lease)
	nodes     map[string]nodeState
	last      []lease.Lease
	delivered bool
}

func (w *watcher) reconcile(objs []any) {
	m := w.m
	seen := make(map[string]bool, len(objs))
	peers := make([]lease.Lease, 0, len(objs))
	for _, obj := range objs {
		n, ok := obj.(*corev1.Node)
		if !ok || n.Name == m.node {
			continue
		}
		seen[n.Name] = true
		st, ok := w.nodes[n.Name]
		if !ok || st.rv != n.ResourceVersion {
			st = w.convert(n, st)
			w.nodes[n.Name] = st
		}
		if !st.peer {
			continue
		}
		if w.self.IsValid() && (st.lease.PublicIP == w.self || st.lease.PublicIPv6 == w.self) {
			continue
		}
		peers = append(peers, st.lease)
	}
	for name := range w.nodes {
		if !seen[name] {
			delete(w.nodes, name)
		}
	}
	slices.SortFunc(peers, func(a, b lease.Lease) int {
		if c := a.Subnet.Addr().Compare(b.Subnet.Addr()); c != 0 {
			return c
		}
		if c := a.IPv6Subnet.Addr().Compare(b.IPv6Subnet.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Node, b.Node)
	})
	if w.delivered && slices.EqualFunc(peers, w.last, func(a, b lease.Lease) bool { return a.Equal(&b) }) {
		return
	}
	w.last, w.delivered = peers, true
	m.log.Debug("peer set changed", "peers", len(peers))
	w.fn(slices.Clone(peers))
}

// convert reads a new version of Node n; prev is its previous state.
func (w *watcher) convert(n *corev1.Node, prev nodeState) nodeState {
	m := w.m
	st := nodeState{rv: n.ResourceVersion, lastWarn: prev.lastWarn}
	l, err := m.keys.NodeLease(n, m.cfg)
	switch {
	case err == nil:
		st.lease, st.peer = l, true
		if prev.bad {
			m.log.Info("node is a usable peer again", "peer", n.Name)
		}
	case errors.Is(err, errNotManaged), errors.Is(err, errOtherBackend):
		m.log.Debug("node is not a vxlan peer", "peer", n.Name, "reason", err)
	default:
		st.bad = true
		m.malformed.Add(1)
		if time.Since(st.lastWarn) >= warnEvery {
			m.log.Warn("skipping a node whose flannel lease cannot be used", "peer", n.Name, "err", err)
			st.lastWarn = time.Now()
		} else {
			m.log.Debug("skipping a node whose flannel lease cannot be used", "peer", n.Name, "err", err)
		}
	}
	return st
}

// permanent reports whether retrying err cannot help: the credentials or
// the permissions are wrong, or the request itself is invalid.
func permanent(err error) bool {
	return apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err)
}

func (m *Manager) backoff() *retry.Backoff {
	return &retry.Backoff{Min: 200 * time.Millisecond, Max: m.maxBo}
}
