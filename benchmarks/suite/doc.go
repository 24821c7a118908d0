// Package suite is the throughput comparison suite behind `make bench`: it
// measures the same two-node topology over four datapaths and reports how
// the userspace VXLAN datapath of `overlay` compares with the kernel's.
//
// # What is measured
//
// Two node network namespaces (ovl-bn-a, ovl-bn-b) are joined by one veth
// pair with a 1500-byte MTU, underlay 172.30.250.1/24 and 172.30.250.2/24.
// Every repetition measures each path in turn (A B C D, A B C D, ...), so
// that noise from a shared machine spreads over all paths instead of
// landing on one:
//
//   - underlay: the veth pair itself, node address to node address;
//   - kernel-vxlan: a kernel VXLAN device named flannel.1 in each node,
//     configured the way flannel's vxlan backend configures it (VNI 1, port
//     8472, nolearning, MTU 1450, <subnet>.0/32, a permanent neighbour and
//     an FDB entry for the peer, an onlink route to the peer subnet);
//   - overlay: `overlay up --backend=userspace` in each node with default
//     settings, peers learned from a real etcd;
//   - overlay-naive: the same with --naive (batch size 1, plain TUN, no
//     GSO/GRO): the floor the batched datapath is measured against.
//
// The VXLAN paths use the same subnets (10.244.1.0/24 and 10.244.2.0/24)
// and carry traffic between the two nodes' <subnet>.0 addresses, so the
// paths differ only in the datapath. A path's devices and processes are
// torn down before the next path is set up: paths never coexist.
//
// Per path and repetition the suite runs iperf3 TCP with one and with four
// streams (Gbit/s at the receiver), iperf3 UDP with 64-byte payloads at an
// unlimited rate (packets per second delivered to the receiver, loss), and
// sockperf UDP ping-pong (round-trip p50 and p99). Around every test it
// samples /proc/stat for the CPU of the whole machine and
// /proc/<pid>/stat for the CPU of the agents, both expressed in cores;
// after the tests it reads the agents' peak resident set (VmHWM).
//
// # Design notes
//
//   - iperf3 is parsed from its -J JSON, sockperf from its percentile
//     lines; the parsers are pure functions with table tests over captured
//     output, so a tool upgrade that changes the format fails loudly.
//   - Every external process runs through `ip netns exec`, which execs in
//     place, so the PID the suite holds is the tool's own: CPU sampling and
//     killing by PID both stay exact. Every run is bounded by a timeout;
//     processes get SIGTERM, then SIGKILL.
//   - Everything the suite creates is recorded on an undo stack (namespaces
//     by name, processes by PID, devices by name) that runs on return,
//     including after SIGINT/SIGTERM cancel the context. A run first removes
//     stale ovl-bn-* namespaces left by a killed run, and holds an flock so
//     two runs never share the names.
//   - The suite talks to etcd and to the agents' /readyz from the host's
//     network namespace through a dialer that creates its socket on a
//     thread switched into the node namespace (see dialInNetns), so no
//     address outside the namespaces is ever used.
//   - Targets from issue #7 are evaluated on medians and printed as
//     information: a missed target never makes the run fail; only a path
//     that cannot be set up or measured does.
//
// Results are written by [WriteFiles] as results.json (schema in
// [Results]), results.md (a markdown table) and chart.svg (grouped bars
// normalised to kernel VXLAN = 1.0, drawn by this package without
// dependencies).
package suite
