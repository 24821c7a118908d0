// Package lease gives each node a pod subnet and tells every node about the
// others, with flannel's subnet leases in etcd v3, in flannel's exact layout,
// so kernel flannel nodes and overlay nodes share one cluster.
//
// # Layout (the compatibility contract)
//
//	<prefix>/config                      network config JSON (ParseConfig)
//	<prefix>/subnets/10.244.62.0-24      one lease per node (SubnetKey)
//	<prefix>/subnets/10.244.62.0-24&fc00::-64   the same in dual stack
//
// with the value
//
//	{"PublicIP":"172.30.250.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d6"}}
//
// The prefix defaults to /coreos.com/network. subnet.env (WriteSubnetEnv,
// ReadSubnetEnv) is written as flannel writes it.
//
// # Design notes
//
// Acquire. An existing lease with the node's PublicIP is reused; else the
// subnet of the previous subnet.env if it is free; else a random free subnet
// in [SubnetMin, SubnetMax]. A key is created only if absent (Txn on
// Version(key) == 0). In dual stack a key names two subnets and another key
// may hold either, so the Txn also requires that nothing below the prefix
// changed since the listing (ModRevision of the prefix range <= listing
// revision), which makes the choice atomic. Losing a race means another try,
// never an exit. The etcd lease granted for a creation is reused across
// attempts and revoked if no key ends up bound to it.
//
// Renew. flannel renews by writing the key again bound to a fresh etcd lease,
// which leaves the old etcd lease behind, and a Txn cannot revoke, so a
// "switch then revoke" scheme still leaks a lease whenever the revoke is lost
// (crash, outage, or a Txn whose outcome is unknown after a timeout). Keep
// instead renews the one etcd lease the key is bound to with KeepAliveOnce,
// RenewMargin before it ends. That is idempotent: a retry after an ambiguous
// failure does no harm, no new etcd lease ever exists, and the key is not
// rewritten, so peers see no spurious events. flannel peers do not depend on
// the key being rewritten (they act on put and delete events). An existing
// lease reused at start is adopted the same way, whoever granted it.
//
// Outages. etcd extends every lease when a leader is elected, so a lease does
// not expire while etcd itself is down; it can expire only while this node
// alone is cut off. Keep retries with capped, jittered backoff; when etcd is
// reachable again it checks the key: if it is gone or no longer ours, it
// revokes the old etcd lease and re-acquires, preferring the same subnet.
// Keep watches its own key, so a lease deleted by an operator is re-acquired
// within moments, not at the next renewal. It never returns while ctx lives,
// except on an authentication or permission error that retrying cannot fix.
//
// Reservations. A key without an etcd lease is a reservation: it is used as
// it is by the node whose PublicIP it names (only its value is refreshed),
// never bound to a TTL, and never deleted by the agent.
//
// Watch. A list of <prefix>/subnets/ at revision R, then a watch from R+1
// with clientv3.WithRequireLeader, so a member that lost its leader does not
// keep a stale stream. The callback receives full snapshots of the peer set
// (own lease excluded, non-vxlan leases ignored, malformed ones skipped with
// a warning naming the key). When the watch fails (compaction, leader loss,
// closed stream) Watch lists again, delivers the reconciled set if it
// differs, and watches from the new revision: the snapshot always equals a
// consistent read, so no peer is lost and none is invented. Retries back off
// exponentially up to Options.MaxBackoff and reset after a healthy watch.
//
// # Concurrency
//
// Manager is stateless beyond its configuration and safe for concurrent use.
// Keep and Watch run until their context ends and return only after every
// goroutine they started has exited. Callbacks are called from the calling
// goroutine of Keep or Watch, one at a time.
package lease
