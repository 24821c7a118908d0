package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Kernel flannel emulation: what flannel's vxlan backend programs, done by
// the harness from the leases in etcd, so that a node runs no overlay at
// all and the kernel's own VXLAN carries its pods' traffic.
const (
	flannelLink = "flannel.1"
	flannelVNI  = 1
	// vxlanOverhead is outer IPv4 + UDP + VXLAN + inner Ethernet.
	vxlanOverhead = 20 + 8 + 8 + 14
	// flannelLeaseTTL is flannel's subnet lease TTL.
	flannelLeaseTTL = 24 * time.Hour
	// etcdOpTimeout bounds each etcd call of the emulation, so a stopped
	// etcd shows up as a retry, not a hang.
	etcdOpTimeout = 5 * time.Second
)

// kernelPeer is what the emulation programs for one other node.
type kernelPeer struct {
	publicIP netip.Addr
	mac      string // net.HardwareAddr.String(), comparable
}

// kernelNode is one emulated flannel node: flannel.1 and its own lease are
// set up once; the watcher (run) is started and stopped with the node.
type kernelNode struct {
	n         *Node
	log       *slog.Logger
	linkIndex int
	mac       net.HardwareAddr
	subnet    netip.Prefix
	key       string
	value     string

	mu     sync.Mutex // guards cancel and done
	cancel context.CancelFunc
	done   chan struct{}

	// programmed is what the kernel holds, per peer subnet. Only the run
	// goroutine touches it, and runs never overlap.
	programmed map[netip.Prefix]kernelPeer
}

// startKernel sets up the node's kernel VXLAN and lease the first time,
// and (re)starts the lease watcher.
func (n *Node) startKernel(ctx context.Context) error {
	n.mu.Lock()
	k := n.kernel
	n.mu.Unlock()
	if k == nil {
		var err error
		if k, err = n.setupKernel(ctx); err != nil {
			return err
		}
		n.mu.Lock()
		n.kernel = k
		n.mu.Unlock()
	}
	// The first reconcile runs before start returns, so the node's routes
	// exist when it is reported ready.
	if err := k.resync(ctx); err != nil {
		return err
	}
	k.start()
	n.mu.Lock()
	n.readyAt = time.Now()
	n.mu.Unlock()
	return nil
}

// setupKernel creates flannel.1 as flannel does (`vxlan id 1 local <ip> dev
// eth0 dstport 8472 nolearning`, MTU of eth0 minus 50), registers the
// node's lease with a Version==0 transaction, and addresses flannel.1 with
// <subnet>.0/32.
func (n *Node) setupKernel(ctx context.Context) (*kernelNode, error) {
	k := &kernelNode{n: n, log: n.c.log.With("node", n.Name), programmed: map[netip.Prefix]kernelPeer{}}
	var mtu int
	err := n.NS.netlink(func(h *netlink.Handle) error {
		eth, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		mtu = eth.Attrs().MTU - vxlanOverhead
		vx := &netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: flannelLink, MTU: mtu, TxQLen: -1},
			VxlanId:      flannelVNI,
			VtepDevIndex: eth.Attrs().Index,
			SrcAddr:      n.Underlay.AsSlice(),
			Port:         VXLANPort,
			Learning:     false,
		}
		if err := h.LinkAdd(vx); err != nil {
			return fmt.Errorf("add %s: %w", flannelLink, err)
		}
		link, err := h.LinkByName(flannelLink)
		if err != nil {
			return err
		}
		k.linkIndex, k.mac = link.Attrs().Index, link.Attrs().HardwareAddr
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernel vxlan: %w", err)
	}
	if !n.opts.UnderlayGSO {
		// A veth hands the kernel's VXLAN super-frames (a TSO-sized inner
		// TCP packet under one outer header) to the peer whole; a real NIC
		// segments them, and a real wire never carries a frame above the
		// MTU. Segmenting in software before the veth models the wire.
		if err := n.NS.setSegmentationOffload("eth0", false); err != nil {
			return nil, fmt.Errorf("model a physical NIC on eth0: %w", err)
		}
	}
	acquire := k.acquire
	if n.c.KubeMode() {
		acquire = k.kubeAcquire
	}
	if err := acquire(ctx); err != nil {
		return nil, err
	}
	err = n.NS.netlink(func(h *netlink.Handle) error {
		link, err := h.LinkByIndex(k.linkIndex)
		if err != nil {
			return err
		}
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(k.subnet.Addr(), 32))}); err != nil {
			return fmt.Errorf("%s address: %w", flannelLink, err)
		}
		return h.LinkSetUp(link)
	})
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.subnet, n.mtu, n.vtepMAC = k.subnet, mtu, k.mac
	n.env = map[string]string{
		"FLANNEL_NETWORK": "",
		"FLANNEL_SUBNET":  netip.PrefixFrom(k.subnet.Addr().Next(), k.subnet.Bits()).String(),
		"FLANNEL_MTU":     fmt.Sprint(mtu),
		"FLANNEL_IPMASQ":  "false",
	}
	n.mu.Unlock()
	return k, nil
}

// acquire picks a free subnet from the network config and creates its lease
// only if the key does not exist (Txn on Version == 0), bound to an etcd
// lease with flannel's TTL, as flannel does.
func (k *kernelNode) acquire(ctx context.Context) error {
	c := k.n.c
	resp, err := c.client.Get(ctx, c.etcdPrefix+"/config")
	if err != nil {
		return fmt.Errorf("read network config: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("no network config at %s/config", c.etcdPrefix)
	}
	subnets, err := configSubnets(resp.Kvs[0].Value)
	if err != nil {
		return err
	}
	value, err := EncodeLeaseValue(k.n.Underlay, flannelVNI, k.mac)
	if err != nil {
		return err
	}
	k.value = string(value)
	// Start at a node-dependent place so kernel nodes do not all race for
	// the same first subnet.
	start := (k.n.Index * 37) % len(subnets)
	for i := range subnets {
		sub := subnets[(start+i)%len(subnets)]
		ok, err := k.create(ctx, SubnetKey(c.etcdPrefix, sub))
		if err != nil {
			return err
		}
		if ok {
			k.subnet, k.key = sub, SubnetKey(c.etcdPrefix, sub)
			k.log.Info("kernel node lease", "key", k.key, "value", k.value)
			return nil
		}
	}
	return errors.New("no free subnet in the network config")
}

// create puts the lease key only if it does not exist yet.
func (k *kernelNode) create(ctx context.Context, key string) (bool, error) {
	cli := k.n.c.client
	g, err := cli.Grant(ctx, int64(flannelLeaseTTL/time.Second))
	if err != nil {
		return false, fmt.Errorf("grant etcd lease: %w", err)
	}
	tr, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(key), "=", 0)).
		Then(clientv3.OpPut(key, k.value, clientv3.WithLease(g.ID))).
		Commit()
	if err != nil || !tr.Succeeded {
		_, _ = cli.Revoke(context.WithoutCancel(ctx), g.ID)
	}
	if err != nil {
		return false, fmt.Errorf("create %s: %w", key, err)
	}
	return tr.Succeeded, nil
}

// configSubnets lists the subnets flannel may hand out from a network
// config: SubnetLen defaults to 24 (or Network+2 for networks smaller than
// /22), and the first subnet is never handed out.
func configSubnets(cfg []byte) ([]netip.Prefix, error) {
	var c struct {
		Network   string
		SubnetLen int
	}
	if err := json.Unmarshal(cfg, &c); err != nil {
		return nil, fmt.Errorf("network config: %w", err)
	}
	nw, err := netip.ParsePrefix(c.Network)
	if err != nil || !nw.Addr().Is4() {
		return nil, fmt.Errorf("network config Network %q: not an IPv4 CIDR", c.Network)
	}
	nw = nw.Masked()
	if c.SubnetLen == 0 {
		c.SubnetLen = 24
		if nw.Bits() > 22 {
			c.SubnetLen = nw.Bits() + 2
		}
	}
	if c.SubnetLen <= nw.Bits() || c.SubnetLen > 30 {
		return nil, fmt.Errorf("network config SubnetLen %d: must be longer than /%d and at most 30", c.SubnetLen, nw.Bits())
	}
	count := 1 << (c.SubnetLen - nw.Bits())
	step := uint32(1) << (32 - c.SubnetLen)
	base := nw.Addr().As4()
	b := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	subs := make([]netip.Prefix, 0, count-1)
	for i := 1; i < count; i++ {
		v := b + uint32(i)*step
		subs = append(subs, netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), c.SubnetLen))
	}
	return subs, nil
}

// start runs the lease watcher until stop.
func (k *kernelNode) start() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	k.cancel, k.done = cancel, done
	go func() {
		defer close(done)
		if k.n.c.KubeMode() {
			k.kubeRun(ctx)
			return
		}
		k.run(ctx)
	}()
}

// stop ends the watcher and waits for it; the kernel state stays.
func (k *kernelNode) stop() {
	k.mu.Lock()
	cancel, done := k.cancel, k.done
	k.cancel, k.done = nil, nil
	k.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

func (k *kernelNode) running() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cancel != nil
}

// run watches the subnets prefix and resynchronises the kernel with the
// full lease list on every change. A failed watch (etcd down, compaction)
// ends in a re-list after a pause, never a hot loop.
func (k *kernelNode) run(ctx context.Context) {
	c := k.n.c
	for ctx.Err() == nil {
		rev, err := k.resyncRev(ctx)
		if err != nil {
			k.log.Warn("kernel node resync failed; retrying", "err", err)
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		wctx, wcancel := context.WithCancel(ctx)
		wch := c.client.Watch(wctx, c.etcdPrefix+"/subnets/", clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for resp := range wch {
			if err := resp.Err(); err != nil || resp.CompactRevision != 0 {
				k.log.Info("kernel node watch ended; re-listing", "err", err, "compacted", resp.CompactRevision)
				break
			}
			if _, err := k.resyncRev(ctx); err != nil {
				k.log.Warn("kernel node resync failed; re-watching", "err", err)
				break
			}
		}
		wcancel()
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return
		}
	}
}

func (k *kernelNode) resync(ctx context.Context) error {
	if k.n.c.KubeMode() {
		_, err := k.kubeResync(ctx)
		return err
	}
	_, err := k.resyncRev(ctx)
	return err
}

// resyncRev lists the leases, re-creates the node's own lease if it is gone
// and programs the kernel to match. It returns the listing's revision.
func (k *kernelNode) resyncRev(ctx context.Context) (int64, error) {
	c := k.n.c
	gctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
	defer cancel()
	resp, err := c.client.Get(gctx, c.etcdPrefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("list leases: %w", err)
	}
	desired := map[netip.Prefix]kernelPeer{}
	own := false
	for _, kv := range resp.Kvs {
		l, err := ParseLease(string(kv.Key), kv.Value)
		if err != nil {
			k.log.Warn("skipping malformed lease", "key", string(kv.Key), "err", err)
			continue
		}
		if l.Subnet == k.subnet {
			own = string(kv.Key) == k.key
			continue
		}
		if l.BackendType != "vxlan" || len(l.VtepMAC) != 6 || !l.PublicIP.Is4() {
			continue
		}
		desired[l.Subnet] = kernelPeer{publicIP: l.PublicIP, mac: l.VtepMAC.String()}
	}
	if !own {
		ok, err := k.create(gctx, k.key)
		if err != nil {
			return 0, err
		}
		k.log.Info("kernel node lease was gone; re-created", "key", k.key, "created", ok)
	}
	if err := k.program(desired); err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// program makes the kernel's neighbour, FDB and route entries match the
// desired peers: for each peer, `neigh <subnet>.0 lladdr <mac> permanent`,
// `fdb <mac> dst <PublicIP> self permanent` and `route <subnet> via
// <subnet>.0 onlink`, all on flannel.1.
func (k *kernelNode) program(desired map[netip.Prefix]kernelPeer) error {
	return k.n.NS.netlink(func(h *netlink.Handle) error {
		var errs []error
		for sub, p := range desired {
			if old, ok := k.programmed[sub]; ok {
				if old == p {
					continue
				}
				errs = append(errs, k.unprogram(h, sub, old))
				delete(k.programmed, sub)
			}
			if err := k.add(h, sub, p); err != nil {
				errs = append(errs, err)
				continue
			}
			k.programmed[sub] = p
			k.log.Debug("kernel node added peer", "subnet", sub, "public_ip", p.publicIP, "mac", p.mac)
		}
		for sub, old := range k.programmed {
			if _, ok := desired[sub]; ok {
				continue
			}
			errs = append(errs, k.unprogram(h, sub, old))
			delete(k.programmed, sub)
			k.log.Debug("kernel node removed peer", "subnet", sub)
		}
		return errors.Join(errs...)
	})
}

func (k *kernelNode) entries(sub netip.Prefix, p kernelPeer) (arp, fdb *netlink.Neigh, route *netlink.Route) {
	mac, _ := net.ParseMAC(p.mac)
	gw := sub.Addr().AsSlice()
	arp = &netlink.Neigh{LinkIndex: k.linkIndex, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		Type: syscall.RTN_UNICAST, IP: gw, HardwareAddr: mac}
	fdb = &netlink.Neigh{LinkIndex: k.linkIndex, Family: syscall.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: p.publicIP.AsSlice(), HardwareAddr: mac}
	route = &netlink.Route{LinkIndex: k.linkIndex, Scope: netlink.SCOPE_UNIVERSE, Dst: prefixNet(sub), Gw: gw,
		Flags: int(netlink.FLAG_ONLINK)}
	return arp, fdb, route
}

func (k *kernelNode) add(h *netlink.Handle, sub netip.Prefix, p kernelPeer) error {
	arp, fdb, route := k.entries(sub, p)
	if err := h.NeighSet(arp); err != nil {
		return fmt.Errorf("neighbour %v: %w", sub.Addr(), err)
	}
	if err := h.NeighSet(fdb); err != nil {
		return fmt.Errorf("fdb %s dst %v: %w", p.mac, p.publicIP, err)
	}
	if err := h.RouteReplace(route); err != nil {
		return fmt.Errorf("route %v: %w", sub, err)
	}
	return nil
}

func (k *kernelNode) unprogram(h *netlink.Handle, sub netip.Prefix, p kernelPeer) error {
	arp, fdb, route := k.entries(sub, p)
	var errs []error
	for _, err := range []error{h.RouteDel(route), h.NeighDel(arp), h.NeighDel(fdb)} {
		if err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove peer %v: %w", sub, err)
	}
	return nil
}

// KernelEntries describes what the kernel of an emulated flannel node holds
// on flannel.1, as `ip neigh`, `bridge fdb` and `ip route` would list it.
type KernelEntries struct {
	Neighbours map[netip.Addr]string // peer <subnet>.0 -> MAC
	FDB        map[string]netip.Addr // MAC -> PublicIP
	Routes     map[netip.Prefix]netip.Addr
}

// KernelEntries reads flannel.1's neighbour, FDB and route entries of an
// emulated kernel node.
func (n *Node) KernelEntries() (KernelEntries, error) {
	e := KernelEntries{Neighbours: map[netip.Addr]string{}, FDB: map[string]netip.Addr{}, Routes: map[netip.Prefix]netip.Addr{}}
	if n.Kind != KernelFlannel {
		return e, fmt.Errorf("%s is not a kernel flannel node", n.Name)
	}
	err := n.NS.netlink(func(h *netlink.Handle) error {
		link, err := h.LinkByName(flannelLink)
		if err != nil {
			return err
		}
		idx := link.Attrs().Index
		neighs, err := h.NeighList(idx, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, nb := range neighs {
			if a, ok := netip.AddrFromSlice(nb.IP); ok && nb.State&netlink.NUD_PERMANENT != 0 {
				e.Neighbours[a.Unmap()] = nb.HardwareAddr.String()
			}
		}
		fdbs, err := h.NeighList(idx, syscall.AF_BRIDGE)
		if err != nil {
			return err
		}
		for _, nb := range fdbs {
			if a, ok := netip.AddrFromSlice(nb.IP); ok && nb.State&netlink.NUD_PERMANENT != 0 {
				e.FDB[nb.HardwareAddr.String()] = a.Unmap()
			}
		}
		routes, err := h.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst == nil || r.Gw == nil {
				continue
			}
			gw, _ := netip.AddrFromSlice(r.Gw)
			ones, _ := r.Dst.Mask.Size()
			dst, _ := netip.AddrFromSlice(r.Dst.IP)
			e.Routes[netip.PrefixFrom(dst.Unmap(), ones)] = gw.Unmap()
		}
		return nil
	})
	if err != nil {
		return e, fmt.Errorf("%s kernel entries: %w", n.Name, err)
	}
	return e, nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
