// Package kube is the Kubernetes subnet manager, the counterpart of
// `flanneld --kube-subnet-mgr`: a node's pod subnet is its Node's
// spec.podCIDR (spec.podCIDRs in dual stack), the network config is
// flannel's net-conf.json from a file (a ConfigMap in a pod), the node
// publishes itself in annotations on its Node, and it learns its peers by
// watching the Nodes. It implements lease.SubnetManager, so `overlay up`
// runs the same datapath on it as on etcd leases.
//
// # Annotations (the compatibility contract)
//
// With the default prefix flannel.alpha.coreos.com (--kube-annotation-prefix),
// a node publishes, byte for byte as flanneld does:
//
//	flannel.alpha.coreos.com/backend-type: vxlan
//	flannel.alpha.coreos.com/backend-data: {"VNI":1,"VtepMAC":"ee:43:f0:12:f0:3f"}
//	flannel.alpha.coreos.com/public-ip: 10.192.220.94
//	flannel.alpha.coreos.com/kube-subnet-manager: "true"
//
// and, when net-conf.json enables IPv6, backend-v6-data and public-ipv6.
// An operator's public-ip-overwrite (public-ipv6-overwrite) on a Node is
// the address its peers send to: on our own Node it becomes the public-ip
// we publish, as in flanneld; on a peer it wins over the peer's public-ip,
// so an overwrite set while that node runs takes effect at once.
//
// # Design notes
//
// Acquire reads the Node with GETs, waiting with a periodic log line while
// the Node does not exist or has no pod CIDR (the controller manager has not
// allocated one yet); a pod CIDR outside the config's Network is an error,
// found before the annotations are patched. Only the annotations that differ
// are patched, with a strategic merge patch on the nodes/status subresource,
// as flanneld does, so kube-flannel's ClusterRole (nodes get/list/watch,
// nodes/status patch) is all the agent needs, plus pods get for the
// POD_NAME fallback of the node name.
//
// Keep runs an informer on the node's own Node (a field selector on its
// name, a cheap single-object watch). It sets NetworkUnavailable=False
// (reason FlannelIsUp) once per Node UID, so a Node deleted and registered
// again gets it, and the annotations, again. A changed public-ip-overwrite
// on our Node is adopted at once. The lease never expires: a Node's pod CIDR
// is fixed for its life.
//
// Watch runs an informer on all Nodes and, on every change, rebuilds the
// peer set from the informer's store, converting only Nodes whose
// resourceVersion changed. The store is what the informer's reflector
// listed and watched: after a watch expires (410 Gone) or the API server
// comes back, the reflector lists again and the store, and so the snapshot,
// equals the API server's state. During an outage the store keeps the last
// state, so the datapath keeps its peers. Nodes without kube-subnet-manager
// "true" are not peers (flanneld's rule); Nodes of another backend-type
// are ignored; a Node that claims a vxlan lease that cannot be used is
// skipped, counted once per resourceVersion, and warned about at most once
// a minute per Node; the other peers are kept.
//
// The informers keep only the fields the manager reads (name, UID,
// resourceVersion, annotations, pod CIDRs, conditions), so a large cluster
// costs little memory. The typed core/v1 client alone is used (no full
// clientset, no informer factory) to keep the agent binary small.
//
// # Concurrency
//
// Manager holds its configuration and an atomic counter; it is safe for
// concurrent use. Keep and Watch return only after their informers have
// stopped. fn and onChange are called from the goroutine of Watch or Keep.
package kube
