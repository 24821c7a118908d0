// Package cluster builds flannel-style clusters out of Linux network
// namespaces, for the end-to-end tests in package e2e and for `overlay demo`.
//
// # Topology
//
//	hub namespace  <prefix>hub: bridge <prefix>br 172.30.250.1/24, etcd on :2379
//	   |  veth <prefix>n<i> (hub side) <-> eth0 (node side), MTU 1500
//	node namespace <prefix>n<i>: eth0 172.30.250.(10+i)/24, ip_forward=1,
//	   |  overlay agent (TUN <prefix>tun) or emulated kernel flannel (flannel.1)
//	   |  bridge cni0 <FLANNEL_SUBNET .1>/24, MTU FLANNEL_MTU
//	pod namespaces <prefix>n<i>p<j>: eth0 <subnet>.(1+j)/24, default via .1
//
// Every namespace, process and link the harness creates lives inside
// namespaces named with the caller's prefix, so parallel users with different
// prefixes never collide, and [CleanupStale] can find the leftovers of a
// killed run of the same prefix by name.
//
// # Design notes
//
// Nodes come in two kinds. An [Agent] node runs `overlay up
// --backend=userspace` under `ip netns exec`, with its output in a per-node
// log file. A [KernelFlannel] node runs no overlay at all: the harness
// programs the kernel exactly as flannel's vxlan backend does (a vxlan device
// flannel.1, id 1, dstport 8472, nolearning; per-peer permanent neighbour,
// FDB entry and onlink route) from the leases in etcd, and registers its own
// lease in flannel's exact JSON. That emulation is what proves the harness
// before the agent exists, and what makes a mixed cluster in the tests.
//
// The test process never joins a namespace itself. Code that must run inside
// one does so on a fresh goroutine that locks its OS thread, switches the
// thread's network namespace, runs, switches back and unlocks (or leaves the
// thread locked, so the runtime discards it, when switching back fails).
// Sockets keep the namespace they were created in, so the etcd client, the
// HTTP client for an agent's /status and the TCP transfer between pods all use
// sockets created that way while the rest of the process stays in the root
// namespace. Netlink programming uses handles opened in the target namespace.
//
// Processes (etcd, agents) are started with Setpgid, so a terminal's Ctrl-C
// reaches only the harness, which then tears down in order, and with
// Pdeathsig, so they die with the harness if it is killed.
//
// Concurrency: a [Cluster] and its [Node] and [Pod] values may be used from
// several goroutines; methods that change the cluster's shape (AddNode,
// Close) serialise on the cluster's mutex.
package cluster
