// Package e2e holds the end-to-end tests of overlay: multi-node clusters in
// network namespaces with a real etcd, built by package e2e/cluster, with
// nodes running the overlay agent (`overlay up --backend=userspace`, built
// from ./cmd/overlay for the run) or an emulation of flannel's kernel vxlan
// backend, and pods behind each node's cni0 bridge.
//
// The tests need root and `ip netns`; they skip with a message saying which
// is missing. Tests that need the agent skip while the binary has no `up`
// command. Set OVERLAY_BIN to test a prebuilt binary instead of building one.
//
// Namespaces are named "ovl-e2e-…"; a run that was killed leaves some
// behind, and the next run removes them first. When a test fails, the tail
// of every node's log is printed and the work directory (logs, etcd data,
// subnet.env files) is kept and named in the output.
package e2e
