package lease

import (
	"context"
	"net"
	"net/netip"
)

// SubnetManager is where a node gets its pod subnet and learns its peers:
// flannel's subnet leases in etcd (Manager) or flannel's annotations on
// Kubernetes Nodes (package overlay/lease/kube). `overlay up` uses nothing
// else, so the datapath, the routes, subnet.env and the status endpoints
// work the same on either.
//
// Implementations are safe for concurrent use: Keep and Watch run at the
// same time, each until its context ends, and return only after every
// goroutine they started has exited.
type SubnetManager interface {
	// Name is the manager's short name as /status shows it: "etcd" or
	// "kube".
	Name() string

	// Config returns the network config (flannel's JSON, validated),
	// waiting while there is none; ctx.Err() when ctx ends first.
	Config(ctx context.Context) (*Config, error)

	// Acquire returns this node's lease, described by o, waiting (with a
	// log line saying for what) while it cannot be had yet, and retrying
	// transient failures until ctx ends. It returns an error at once when
	// retrying cannot help (a full network, a subnet outside the network,
	// missing permissions).
	Acquire(ctx context.Context, o AcquireOptions) (*Lease, error)

	// Keep holds the lease l (from Acquire with o) until ctx ends, then
	// returns nil: it renews it, republishes it when it is removed or
	// overwritten, and calls onChange (may be nil) from its own goroutine
	// with the current lease whenever it was renewed or replaced; a change
	// of Subnet or IPv6Subnet means the node must be reconfigured. The
	// agent starts Keep once the node carries traffic (datapath up,
	// subnet.env written): a manager announces the node there (the kube
	// manager sets the Node's NetworkUnavailable condition to False).
	// Keep returns early only on errors that retrying cannot fix.
	Keep(ctx context.Context, l *Lease, o AcquireOptions, onChange func(Lease)) error

	// Watch calls fn with the full set of peers (sorted by subnet, the
	// node's own lease excluded) whenever it changes, until ctx ends, and
	// then returns nil. The first call comes after the first complete
	// listing, possibly with an empty set. self is the node's public
	// address: a lease with that PublicIP or PublicIPv6 is never a peer.
	// Malformed peers are skipped with a warning and counted
	// (MalformedPeers); the others are kept. fn is called from Watch's
	// goroutine, one call at a time, and owns the slice. While the store is
	// unreachable Watch retries and fn is not called, so the last set
	// stays in force; once it is back, Watch reconciles and delivers the
	// current set if it differs.
	Watch(ctx context.Context, self netip.Addr, fn func(peers []Lease)) error

	// MalformedPeers is how many peer records Watch skipped as malformed
	// since the manager was made, each version of a record counted once
	// (a record read again unchanged after a relist is not counted again).
	MalformedPeers() uint64
}

var _ SubnetManager = (*Manager)(nil)

// Name implements SubnetManager: "etcd".
func (m *Manager) Name() string { return "etcd" }

// MalformedPeers implements SubnetManager.
func (m *Manager) MalformedPeers() uint64 { return m.malformed.Load() }

// EncodeBackendData returns flannel's vxlan backend data for a lease or a
// Node annotation, byte for byte as flanneld writes it:
// {"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d6"}.
func EncodeBackendData(vni uint32, mac net.HardwareAddr) ([]byte, error) {
	d := vxlanData{VNI: vni}
	if mac != nil {
		d.VtepMAC = mac.String()
	}
	return jsonMarshal(d)
}

// DecodeBackendData parses flannel's vxlan backend data. vni is 0 when the
// writer left VNI out; mac is nil when it left VtepMAC out. An empty or
// "null" value gives 0, nil, nil.
func DecodeBackendData(data []byte) (vni uint32, mac net.HardwareAddr, err error) {
	return decodeVXLANData("backend data", data)
}
