// Package routes holds the overlay's peer table and programs the kernel side
// of the TUN device.
//
// The peer table maps overlay prefixes (the subnets flannel leases hand out)
// to the underlay endpoint and VtepMAC of the node that owns them. The
// datapath looks up every packet's destination in it, so it is built for
// reading:
//
//   - A Table holds an immutable Snapshot behind an atomic.Pointer. Update
//     builds a complete new snapshot off to the side and swaps it in; a
//     reader that loaded the old one keeps a consistent view until it loads
//     again. Readers never take a lock, and an update never pauses them.
//   - Lookup masks the address once per distinct prefix length present in
//     the snapshot, longest first, and probes a map keyed by the masked
//     address. flannel gives every subnet of a family the same length
//     (SubnetLen), so a lookup is one mask and one map probe per family no
//     matter how many peers there are; it allocates nothing.
//   - The snapshot also indexes who may send (Source): each underlay
//     address a peer's lease names (Endpoint's address, PublicIPv6) and
//     each VtepMAC, with the peers behind it, so the datapath's source
//     checks cost one map probe per received message and one comparison
//     per packet (Source.Owns of the route its source address matches).
//   - Each peer has a Counters object that outlives snapshots: Update carries
//     a peer's counters over to the new snapshot when the peer's subnet is
//     unchanged, so a lease refresh does not reset its traffic figures.
//     Counters are atomic and laid out so that the transmit side (written by
//     the out pump) and the receive side (written by the in pump) sit on
//     different cache lines.
//
// The kernel side (ConfigureLink, Linux only) gives the TUN device the
// address flannel gives flannel.1 (the subnet's network address as a /32),
// its MTU, brings it up, and routes the whole overlay network through it. It
// uses netlink, never the ip command, is idempotent, and its Remove undoes
// only what it added.
package routes
