package routes

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// requireNetns skips the test unless it runs as root on a kernel where
// network namespaces can be created.
func requireNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces (run the tests as root, as CI does)")
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Skipf("network namespaces unavailable: %v", err)
	}
}

// newNetns creates a named network namespace (prefix ovl-tn-) that the test
// deletes when it ends, and returns a function that runs fn on a thread
// switched into it.
func newNetns(t *testing.T) func(fn func()) {
	t.Helper()
	requireNetns(t)
	var b [4]byte
	rand.Read(b[:])
	name := "ovl-tn-r" + hex.EncodeToString(b[:])
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Skipf("cannot create network namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("switch back from %s: %v", name, err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return func(fn func()) {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			t.Fatal(err)
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			t.Fatalf("enter %s: %v", name, err)
		}
		defer func() {
			// A thread that cannot switch back stays locked, so the runtime
			// discards it when the goroutine ends instead of reusing it.
			if err := netns.Set(orig); err == nil {
				runtime.UnlockOSThread()
			}
		}()
		fn()
	}
}

// addTUN adds a persistent TUN device (the kind of link the overlay
// configures) to the current namespace; it goes away with the namespace.
func addTUN(t *testing.T, name string) {
	t.Helper()
	tun := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 1500}, Mode: netlink.TUNTAP_MODE_TUN, Flags: netlink.TUNTAP_NO_PI}
	if err := netlink.LinkAdd(tun); err != nil {
		t.Fatalf("add TUN %s: %v", name, err)
	}
}

type linkState struct {
	up    bool
	mtu   int
	addrs []string
	route map[string]bool // destinations of routes through the link
}

func readLink(t *testing.T, name string) linkState {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	st := linkState{up: l.Attrs().Flags&net.FlagUp != 0, mtu: l.Attrs().MTU, route: map[string]bool{}}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		st.addrs = append(st.addrs, a.IPNet.String())
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			st.route[r.Dst.String()] = true
		}
	}
	return st
}

func TestConfigureLink(t *testing.T) {
	in := newNetns(t)
	in(func() {
		addTUN(t, "ovl-tn0")
		// Something else already put the IPv4 address there: not ours to
		// remove. (An IPv6 one would not survive the link going down.)
		l0, _ := netlink.LinkByName("ovl-tn0")
		if err := netlink.AddrAdd(l0, &netlink.Addr{IPNet: ipNet(mustPrefix("10.244.62.0/32"))}); err != nil {
			t.Fatal(err)
		}
	})
	cfg := LinkConfig{
		Name:        "ovl-tn0",
		MTU:         1450,
		Addr:        mustPrefix("10.244.62.0/32"),
		Network:     mustPrefix("10.244.0.0/16"),
		IPv6Addr:    mustPrefix("fc00:0:0:3e::/128"),
		IPv6Network: mustPrefix("fc00::/48"),
	}
	var l1, l2 *Link
	in(func() {
		var err error
		if l1, err = ConfigureLink(cfg); err != nil {
			t.Fatal(err)
		}
		st := readLink(t, "ovl-tn0")
		if !st.up || st.mtu != 1450 {
			t.Errorf("after configure: up=%v mtu=%d", st.up, st.mtu)
		}
		joined := strings.Join(st.addrs, " ")
		if !strings.Contains(joined, "10.244.62.0/32") || !strings.Contains(joined, "fc00:0:0:3e::/128") {
			t.Errorf("addresses = %v", st.addrs)
		}
		if !st.route["10.244.0.0/16"] || !st.route["fc00::/48"] {
			t.Errorf("routes = %v", st.route)
		}
		// Idempotent: configuring again changes nothing and owns nothing.
		if l2, err = ConfigureLink(cfg); err != nil {
			t.Fatalf("second ConfigureLink: %v", err)
		}
	})
	// Remove may run on any thread: the Link kept its namespace.
	if err := l2.Remove(); err != nil {
		t.Fatal(err)
	}
	in(func() {
		st := readLink(t, "ovl-tn0")
		if !st.up || !st.route["10.244.0.0/16"] || len(st.addrs) != 2 {
			t.Errorf("Remove of a no-op configuration changed the link: %+v", st)
		}
	})
	if err := l1.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := l1.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	in(func() {
		st := readLink(t, "ovl-tn0")
		if st.up || st.mtu != 1500 || st.route["10.244.0.0/16"] || st.route["fc00::/48"] {
			t.Errorf("after Remove: %+v", st)
		}
		if len(st.addrs) != 1 || st.addrs[0] != "10.244.62.0/32" {
			t.Errorf("Remove deleted an address it did not add, or left its own: %v", st.addrs)
		}
	})
}

func TestConfigureLinkConflict(t *testing.T) {
	in := newNetns(t)
	in(func() {
		addTUN(t, "ovl-tn0")
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "ovl-tn1"}}); err != nil {
			t.Fatal(err)
		}
		other, _ := netlink.LinkByName("ovl-tn1")
		if err := netlink.LinkSetUp(other); err != nil {
			t.Fatal(err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: other.Attrs().Index, Dst: ipNet(mustPrefix("10.244.0.0/16")), Scope: netlink.SCOPE_LINK}); err != nil {
			t.Fatal(err)
		}
		_, err := ConfigureLink(LinkConfig{Name: "ovl-tn0", MTU: 1450, Addr: mustPrefix("10.244.62.0/32"), Network: mustPrefix("10.244.0.0/16")})
		if err == nil || !strings.Contains(err.Error(), "ovl-tn1") {
			t.Fatalf("ConfigureLink over another link's route: err = %v, want one naming ovl-tn1", err)
		}
		// The failed attempt rolled back what it had done.
		st := readLink(t, "ovl-tn0")
		if st.up || st.mtu == 1450 || len(st.addrs) != 0 {
			t.Errorf("failed ConfigureLink left changes behind: %+v", st)
		}
		if _, err := ConfigureLink(LinkConfig{Name: "ovl-tn-missing"}); err == nil {
			t.Error("ConfigureLink of a missing link succeeded")
		}
	})
	for _, bad := range []LinkConfig{
		{},
		{Name: "x", MTU: -1},
		{Name: "x", Addr: netip.MustParsePrefix("fc00::/128")},
		{Name: "x", IPv6Network: netip.MustParsePrefix("10.0.0.0/8")},
	} {
		if _, err := ConfigureLink(bad); err == nil {
			t.Errorf("ConfigureLink(%+v) accepted a bad config", bad)
		}
	}
}

// Without IPv6 in the overlay the link gets no link-local address, so the
// kernel sends no router solicitations or MLD reports into the datapath.
func TestConfigureLinkIPv4OnlyHasNoIPv6(t *testing.T) {
	in := newNetns(t)
	in(func() {
		// A TUN held open, as the agent holds its own: only a link with
		// carrier gets a link-local address.
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq("ovl-tn1")
		if err != nil {
			t.Fatal(err)
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			t.Fatal(err)
		}
		l, err := ConfigureLink(LinkConfig{Name: "ovl-tn1", MTU: 1450,
			Addr: mustPrefix("10.244.62.0/32"), Network: mustPrefix("10.244.0.0/16")})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Remove()
		link, err := netlink.LinkByName("ovl-tn1")
		if err != nil {
			t.Fatal(err)
		}
		// Give the kernel time to generate a link-local address if it
		// were going to (it does so synchronously on NETDEV_UP, but DAD
		// and timers run later).
		time.Sleep(200 * time.Millisecond)
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		if len(addrs) != 0 {
			t.Errorf("IPv4-only overlay link has IPv6 addresses %v", addrs)
		}
	})
}
