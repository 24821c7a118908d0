package suite

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"overlay/benchmarks/floor"
)

// floorReadyTimeout bounds the wait for a floor relay's TUN.
const floorReadyTimeout = 15 * time.Second

// startFloor runs the floor relay (benchmarks/floor) in both nodes, each
// sending to the other's underlay address, configures the TUN as the agent
// configures its own (<subnet>.0/32, a route to the peer's subnet), and
// waits until the two reach each other. The relays' teardown is on undo.
func startFloor(ctx context.Context, cfg Config, path PathID, dir string, undo *undoStack) ([]*process, error) {
	argv := cfg.FloorCommand
	if argv == nil {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("floor relay: %w", err)
		}
		argv = []string{self}
	}
	extra := cfg.FloorArgs
	if path == FloorB {
		extra = cfg.FloorArgsB
	}
	procs := make([]*process, 0, len(nodes))
	for i, n := range nodes {
		peer := nodes[1-i]
		args := append(append([]string{}, argv...), floor.Arg,
			"--tun", tunName, "--mtu", strconv.Itoa(overlayMTU),
			"--local", netip.AddrPortFrom(n.underlay.Addr(), vxlanPort).String(),
			"--peer", netip.AddrPortFrom(peer.underlay.Addr(), vxlanPort).String(),
			"--vni", strconv.Itoa(vxlanVNI), "--mac", n.vtepMAC, "--peer-mac", peer.vtepMAC)
		args = append(args, extra...)
		p, err := startProcess("floor relay ("+string(path)+", "+n.ns+")", n.ns, filepath.Join(dir, "floor-"+n.ns+".log"), args...)
		if err != nil {
			return nil, err
		}
		undo.push("stop "+p.name, p.stop)
		procs = append(procs, p)
	}
	for i, n := range nodes {
		if err := waitLink(ctx, n.ns, tunName, procs[i]); err != nil {
			return nil, err
		}
		peer := nodes[1-i]
		for _, a := range [][]string{
			{"-n", n.ns, "link", "set", tunName, "up"},
			{"-n", n.ns, "addr", "add", netip.PrefixFrom(n.vtep(), 32).String(), "dev", tunName},
			{"-n", n.ns, "route", "replace", peer.subnet.String(), "dev", tunName, "src", n.vtep().String()},
		} {
			if err := ip(ctx, a...); err != nil {
				return nil, err
			}
		}
	}
	for i := range nodes {
		if err := waitPing(ctx, nodes[i].ns, nodes[1-i].vtep(), peerReachTimeout); err != nil {
			return nil, fmt.Errorf("floor relay does not carry traffic: %w; relay log:\n%s", err, procs[i].logTail(15))
		}
	}
	return procs, nil
}

// waitLink waits until device name exists in namespace ns (the relay
// created it), or p exits.
func waitLink(ctx context.Context, ns, name string, p *process) error {
	deadline := time.Now().Add(floorReadyTimeout)
	for {
		if _, err := runTool(ctx, "", ipTimeout, "ip", "-n", ns, "link", "show", "dev", name); err == nil {
			return nil
		}
		switch {
		case p.exited():
			return fmt.Errorf("%s: %w; last log lines:\n%s", p.name, p.exitError(), p.logTail(10))
		case ctx.Err() != nil:
			return ctx.Err()
		case time.Now().After(deadline):
			return fmt.Errorf("%s: no device %s after %v; last log lines:\n%s", p.name, name, floorReadyTimeout, p.logTail(10))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
