package suite

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Names and addresses of the topology. Every namespace and link the suite
// creates starts with namePrefix, so a stale run's leftovers can be found.
const (
	namePrefix = "ovl-bn-"
	tunName    = namePrefix + "tun0"
	vxlanName  = "flannel.1" // the name flannel gives its kernel VXLAN device
	vxlanVNI   = 1
	vxlanPort  = 8472

	// Wire overhead of VXLAN over IPv4 (DESIGN.md): outer IPv4 + UDP +
	// VXLAN header + inner Ethernet.
	vxlanOverhead = 20 + 8 + 8 + 14
	underlayMTU   = 1500
	overlayMTU    = underlayMTU - vxlanOverhead

	clusterNetwork = "10.244.0.0/16"
)

// node is one of the two node namespaces.
type node struct {
	ns       string       // network namespace
	veth     string       // its end of the underlay veth pair
	underlay netip.Prefix // its underlay address
	subnet   netip.Prefix // its pod subnet; <subnet>.0 is its VTEP address
	vtepMAC  string       // MAC of its kernel flannel.1 (kernel path only)
}

// vtep is the node's address on the overlay: <subnet>.0, as flannel gives
// flannel.1 and overlay gives its TUN.
func (n node) vtep() netip.Addr { return n.subnet.Addr() }

// nodes are the client node (a) and the server node (b). The MACs are
// locally administered and name the subnet, so captures read easily.
var nodes = [2]node{
	{ns: namePrefix + "a", veth: namePrefix + "va", underlay: netip.MustParsePrefix("172.30.250.1/24"),
		subnet: netip.MustParsePrefix("10.244.1.0/24"), vtepMAC: "02:00:0a:f4:01:00"},
	{ns: namePrefix + "b", veth: namePrefix + "vb", underlay: netip.MustParsePrefix("172.30.250.2/24"),
		subnet: netip.MustParsePrefix("10.244.2.0/24"), vtepMAC: "02:00:0a:f4:02:00"},
}

// lockRun takes an exclusive lock so that two suite runs never share the
// ovl-bn-* names (the stale cleanup of one would destroy the other's
// namespaces). The lock ends with the process, so a killed run leaves none.
func lockRun() (unlock func() error, err error) {
	dir := "/run"
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		dir = os.TempDir()
	}
	path := filepath.Join(dir, "overlay-bench.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: another overlay benchmark run holds %s", ErrBusy, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f.Close, nil
}

// netnsNames lists the named network namespaces (ip netns list).
func netnsNames() ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// removeNetns kills every process left in namespace ns (only the suite's
// own processes live in ovl-bn-* namespaces) and deletes it.
func removeNetns(ctx context.Context, ns string) error {
	out, err := runTool(ctx, "", ipTimeout, "ip", "netns", "pids", ns)
	if err == nil {
		for f := range strings.FieldsSeq(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	return ip(ctx, "netns", "del", ns)
}

// removeStale deletes the ovl-bn-* namespaces and host links a run killed
// before its cleanup left behind. The caller holds the run lock.
func removeStale(ctx context.Context, report func(what string)) error {
	names, err := netnsNames()
	if err != nil {
		return fmt.Errorf("list network namespaces: %w", err)
	}
	var errs []error
	for _, ns := range names {
		if strings.HasPrefix(ns, namePrefix) {
			report("namespace " + ns)
			if err := removeNetns(ctx, ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	links, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Name(), namePrefix) {
			report("link " + l.Name())
			if err := ip(ctx, "link", "del", l.Name()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// setupTopology creates the two node namespaces and the veth pair between
// them and waits until the underlay answers pings.
func setupTopology(ctx context.Context, undo *undoStack) error {
	for _, n := range nodes {
		if err := ip(ctx, "netns", "add", n.ns); err != nil {
			return err
		}
		undo.push("delete namespace "+n.ns, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return removeNetns(ctx, n.ns)
		})
	}
	a, b := nodes[0], nodes[1]
	if err := ip(ctx, "link", "add", a.veth, "netns", a.ns, "mtu", strconv.Itoa(underlayMTU), "type", "veth",
		"peer", "name", b.veth, "netns", b.ns, "mtu", strconv.Itoa(underlayMTU)); err != nil {
		return err
	}
	for _, n := range nodes {
		for _, args := range [][]string{
			{"-n", n.ns, "addr", "add", n.underlay.String(), "dev", n.veth},
			{"-n", n.ns, "link", "set", n.veth, "up"},
			{"-n", n.ns, "link", "set", "lo", "up"},
		} {
			if err := ip(ctx, args...); err != nil {
				return err
			}
		}
	}
	return waitPing(ctx, a.ns, b.underlay.Addr(), 15*time.Second)
}

// waitPing pings dst from namespace ns until it answers or timeout passes.
func waitPing(ctx context.Context, ns string, dst netip.Addr, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := runTool(ctx, ns, 5*time.Second, "ping", "-c", "1", "-W", "1", "-q", dst.String())
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s cannot reach %s within %v: %w", ns, dst, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// setupKernelVXLAN configures flannel.1 in both nodes as flannel's vxlan
// backend does: a VXLAN device with VNI 1 on port 8472 bound to the
// underlay device, no learning (flannel programs every peer statically),
// MTU 1450, address <subnet>.0/32; for the peer a permanent neighbour entry
// (its VTEP address to its VtepMAC), an FDB entry (its VtepMAC to its
// underlay address) and an onlink route to its subnet via its VTEP address.
func setupKernelVXLAN(ctx context.Context, undo *undoStack) error {
	for _, n := range nodes {
		if err := ip(ctx, "-n", n.ns, "link", "add", vxlanName, "address", n.vtepMAC, "type", "vxlan",
			"id", strconv.Itoa(vxlanVNI), "local", n.underlay.Addr().String(), "dev", n.veth,
			"dstport", strconv.Itoa(vxlanPort), "nolearning"); err != nil {
			return fmt.Errorf("kernel VXLAN (is CONFIG_VXLAN available?): %w", err)
		}
		undo.push("delete "+vxlanName+" in "+n.ns, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), ipTimeout)
			defer cancel()
			return ip(ctx, "-n", n.ns, "link", "del", vxlanName)
		})
		for _, args := range [][]string{
			{"-n", n.ns, "link", "set", vxlanName, "mtu", strconv.Itoa(overlayMTU), "up"},
			{"-n", n.ns, "addr", "add", netip.PrefixFrom(n.vtep(), 32).String(), "dev", vxlanName},
		} {
			if err := ip(ctx, args...); err != nil {
				return err
			}
		}
	}
	for i, n := range nodes {
		peer := nodes[1-i]
		if err := ip(ctx, "-n", n.ns, "neigh", "replace", peer.vtep().String(), "lladdr", peer.vtepMAC,
			"dev", vxlanName, "nud", "permanent"); err != nil {
			return err
		}
		if _, err := runTool(ctx, n.ns, ipTimeout, "bridge", "fdb", "append", peer.vtepMAC, "dev", vxlanName,
			"dst", peer.underlay.Addr().String()); err != nil {
			return err
		}
		if err := ip(ctx, "-n", n.ns, "route", "replace", peer.subnet.String(), "via", peer.vtep().String(),
			"dev", vxlanName, "onlink"); err != nil {
			return err
		}
	}
	return waitPing(ctx, nodes[0].ns, nodes[1].vtep(), 15*time.Second)
}
