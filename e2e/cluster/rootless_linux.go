package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// addRootlessNS creates the node's user and network namespaces as the
// unprivileged user, keeps them alive with a holder process, and names the
// network namespace with `ip netns attach` so the harness can wire it like
// any other.
func (n *Node) addRootlessNS(ctx context.Context) error {
	r := n.opts.Rootless
	uid, gid := strconv.FormatUint(uint64(r.UID), 10), strconv.FormatUint(uint64(r.GID), 10)
	// The agent, as that user, writes subnet.env in its node directory and
	// must reach it through WorkDir.
	if st, err := os.Stat(n.c.opts.WorkDir); err == nil {
		if err := os.Chmod(n.c.opts.WorkDir, st.Mode().Perm()|0o111); err != nil {
			return err
		}
	}
	if err := os.Chown(filepath.Dir(n.SubnetFile), int(r.UID), int(r.GID)); err != nil {
		return fmt.Errorf("hand the node directory to uid %s: %w", uid, err)
	}
	cmd := command(context.Background(), "setpriv", "--reuid="+uid, "--regid="+gid, "--clear-groups",
		"unshare", "--user", "--map-root-user", "--net", "sleep", "infinity")
	cmd.Cancel = nil
	h, err := startProc(n.Name+" namespace holder", cmd, n.LogPath)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.holder = h
	n.mu.Unlock()
	// unshare has made the namespaces and written the uid map once it has
	// exec'd sleep.
	deadline := time.Now().Add(10 * time.Second)
	pid := strconv.Itoa(h.pid())
	for {
		comm, _ := os.ReadFile("/proc/" + pid + "/comm")
		if strings.TrimSpace(string(comm)) == "sleep" {
			break
		}
		if h.exited() {
			return fmt.Errorf("creating the rootless namespaces failed (%s); log %s:\n%s", h.exitStatus(), n.LogPath, tailFile(n.LogPath, 10))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("rootless namespace holder %s did not start", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out, err := command(ctx, "ip", "netns", "attach", n.Name, pid).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns attach %s %s: %w: %s", n.Name, pid, err, strings.TrimSpace(string(out)))
	}
	return n.NS.netlink(func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
}

// AgentCredentials returns the agent process's real, effective, saved and
// filesystem uids as the root namespace sees them (/proc/PID/status).
func (n *Node) AgentCredentials() ([]int, error) {
	pid := n.PID()
	if pid == 0 {
		return nil, fmt.Errorf("%s: agent not running", n.Name)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			var ids []int
			for _, f := range strings.Fields(rest) {
				id, err := strconv.Atoi(f)
				if err != nil {
					return nil, err
				}
				ids = append(ids, id)
			}
			return ids, nil
		}
	}
	return nil, fmt.Errorf("/proc/%d/status has no Uid line", pid)
}
