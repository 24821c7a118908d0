package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/urfave/cli/v2"

	"overlay/encap"
	"overlay/lease"
	"overlay/lease/kube"
	"overlay/routes"
	"overlay/tunnel"
)

func upCommand() *cli.Command {
	return &cli.Command{
		Name:  "up",
		Usage: "run the node agent: acquire a subnet lease, bring up the userspace VXLAN datapath, write subnet.env",
		Description: "Runs until SIGTERM or SIGINT. In order: reads the network config from etcd, acquires\n" +
			"(or reclaims) this node's subnet lease, creates the TUN device with its address and the\n" +
			"route of the overlay network, starts the datapath, writes subnet.env, tells systemd\n" +
			"READY=1, and from then on answers 200 on /readyz. On SIGTERM it stops the datapath and\n" +
			"keeps the lease and subnet.env, so a restart reclaims the same subnet; a second signal\n" +
			"exits at once. Every flag can also be set as OVERLAY_<FLAG> or FLANNELD_<FLAG>.",
		Flags: upFlags(),
		Action: func(c *cli.Context) error {
			log, err := newLogger(c.App.ErrWriter, c.String("log-level"), c.String("log-format"))
			if err != nil {
				return err
			}
			cfg, err := parseUp(c, log)
			if err != nil {
				return err
			}
			ctx, stop := signalContext(c.Context, log)
			defer stop()
			return runAgent(ctx, cfg, log)
		},
	}
}

// agent is a running `overlay up`. Its fields are set once during start-up,
// before any goroutine that reads them exists, except those documented
// otherwise.
type agent struct {
	cfg    *upConfig
	log    *slog.Logger
	netCfg *lease.Config
	mgr    lease.SubnetManager
	node   string // this node's Node name (kube); "" with etcd
	acq    lease.AcquireOptions
	mac    encap.MAC
	vni    encap.VNI
	port   int

	table routes.Table
	tun   *tunnel.Tunnel
	masq  *masquerader // nil unless --ip-masq

	// own is the current lease, replaced when Keep re-acquires.
	own atomic.Pointer[lease.Lease]
	// peers is the last peer set Watch delivered.
	peers atomic.Pointer[[]lease.Lease]

	mu   sync.Mutex   // guards link, serializing reconfiguration
	link *routes.Link // nil after a failed reconfiguration

	status *statusServer // nil when --healthz-port is 0
}

// runAgent is `overlay up` after its flags were checked. It returns nil
// after a clean shutdown and an error when the agent could not start or a
// part of it failed for good.
func runAgent(ctx context.Context, cfg *upConfig, log *slog.Logger) (err error) {
	a := &agent{cfg: cfg, log: log}
	if cfg.kube != nil {
		log.Info("starting overlay", "version", buildVersion(), "interface", cfg.under.iface.Name,
			"public-ip", cfg.under.publicIP, "subnet-manager", "kube", "api-server", cfg.kube.rest.Host,
			"net-config", cfg.kube.netConfPath)
	} else {
		log.Info("starting overlay", "version", buildVersion(), "interface", cfg.under.iface.Name,
			"public-ip", cfg.under.publicIP, "subnet-manager", "etcd", "etcd", cfg.etcd.Endpoints, "prefix", cfg.prefix)
	}

	// The health endpoint comes first, so /healthz answers (and /readyz
	// says 503) while we wait for etcd.
	if cfg.healthzAddr != "" {
		if a.status, err = newStatusServer(cfg.healthzAddr, a.statusSnapshot, log); err != nil {
			return err
		}
		srvDone := make(chan error, 1)
		go func() { srvDone <- a.status.Serve() }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = a.status.Shutdown(sctx)
			if serr := <-srvDone; serr != nil {
				log.Warn("health endpoint", "err", serr)
			}
		}()
	}

	closeMgr, err := a.newManager(ctx)
	if err != nil {
		return err
	}
	defer closeMgr()

	if err := a.configure(ctx); err != nil {
		return err
	}
	own, err := a.mgr.Acquire(ctx, a.acq)
	if err != nil {
		return fmt.Errorf("acquire a subnet lease: %w", err)
	}
	a.own.Store(own)
	if a.node != "" {
		log.Info("lease acquired", "subnet", own.Subnet, "ipv6-subnet", own.IPv6Subnet, "node", a.node, "public-ip", own.PublicIP)
	} else {
		log.Info("lease acquired", "subnet", own.Subnet, "ipv6-subnet", own.IPv6Subnet, "key", own.Key,
			"expires", own.Expiration, "reservation", own.Reservation())
	}

	if err := a.startDatapath(); err != nil {
		return err
	}
	defer a.stopDatapath()

	// From here on every part runs in its own goroutine; the first to fail
	// for good stops the others.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(nil) // runs before wg.Wait
	run := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				cancel(fmt.Errorf("%s: %w", name, err))
			}
		}()
	}
	run("datapath", a.tun.Run)
	run("peer watch", func(ctx context.Context) error {
		return a.mgr.Watch(ctx, cmp.Or(a.acq.PublicIP, a.acq.PublicIPv6), a.setPeers)
	})

	if err := a.publish(ctx); err != nil {
		cancel(err)
	} else {
		// Keep starts once the node carries traffic: the kube manager
		// announces the node there (NetworkUnavailable=False).
		run("lease keeper", func(ctx context.Context) error { return a.mgr.Keep(ctx, own, a.acq, a.leaseChanged) })
		if sent, nerr := daemon.SdNotify(false, daemon.SdNotifyReady); nerr != nil {
			log.Warn("systemd notify", "err", nerr)
		} else if sent {
			log.Debug("told systemd READY=1")
		}
		if a.status != nil {
			a.status.ready.Store(true)
		}
		log.Info("ready", "subnet", own.Subnet, "mtu", cfg.mtu, "subnet-file", cfg.subnetFile)
	}

	<-ctx.Done()
	_, _ = daemon.SdNotify(false, daemon.SdNotifyStopping)
	if a.status != nil {
		a.status.ready.Store(false)
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	log.Info("stopping; the lease and subnet.env are kept for the next start")
	return nil
}

// newManager makes the subnet manager the flags ask for: the Kubernetes API
// (--kube-subnet-mgr) or etcd. The returned func releases its client.
func (a *agent) newManager(ctx context.Context) (func(), error) {
	cfg := a.cfg
	if cfg.kube == nil {
		etcdCli, err := lease.NewClient(cfg.etcd)
		if err != nil {
			return nil, err
		}
		m, err := lease.New(etcdCli, lease.Options{Prefix: cfg.prefix, Logger: a.log, RenewMargin: cfg.renewMargin})
		if err != nil {
			etcdCli.Close()
			return nil, err
		}
		a.mgr = m
		return func() { etcdCli.Close() }, nil
	}
	kube.RouteKlog(a.log)
	client, err := kube.NewClient(cfg.kube.rest)
	if err != nil {
		return nil, err
	}
	if a.node, err = kube.NodeName(ctx, client, cfg.kube.getenv); err != nil {
		return nil, err
	}
	m, err := kube.New(kube.Options{
		Client: client, NodeName: a.node, Prefix: cfg.kube.prefix, Config: cfg.kube.netConf,
		SetNodeNetworkUnavailable: cfg.kube.setNU, Logger: a.log,
	})
	if err != nil {
		return nil, err
	}
	a.mgr = m
	return func() {}, nil
}

// configure reads the network config (from etcd, waiting for it, or the
// net-conf.json read at start) and derives what the lease and the datapath
// need.
func (a *agent) configure(ctx context.Context) error {
	var err error
	if a.netCfg, err = a.mgr.Config(ctx); err != nil {
		return fmt.Errorf("network config: %w", err)
	}
	cfg := a.cfg
	if a.netCfg.EnableIPv6 && cfg.mtu < minMTU6 {
		return fmt.Errorf("MTU %d is below IPv6's minimum of %d and the network config enables IPv6: raise --mtu or the underlay MTU", cfg.mtu, minMTU6)
	}
	if a.vni, err = encap.NewVNI(a.netCfg.Backend.VNI); err != nil {
		return fmt.Errorf("network config Backend.VNI: %w", err)
	}
	a.port = cmp.Or(cfg.port, int(a.netCfg.Backend.Port), encap.PortLinux)

	hw := lease.VtepMAC(lease.MachineID(), cfg.under.publicIP)
	if a.mac, err = encap.MACFrom(hw); err != nil {
		return err
	}
	a.acq = lease.AcquireOptions{PublicIP: cfg.under.publicIP, PublicIPv6: cfg.under.publicIPv6, VtepMAC: hw}
	if !a.netCfg.EnableIPv4 {
		a.acq.PublicIP = netip.Addr{}
	}
	prev, err := lease.ReadSubnetEnv(cfg.subnetFile)
	switch {
	case err == nil:
		a.acq.Previous, a.acq.PreviousIPv6 = prev.Subnet, prev.IPv6Subnet
	case errors.Is(err, fs.ErrNotExist):
	default:
		a.log.Warn("ignoring the previous subnet file", "path", cfg.subnetFile, "err", err)
	}
	return nil
}

// startDatapath opens the TUN, gives it its address and routes, opens the
// UDP socket and builds the tunnel. On error it undoes what it did.
func (a *agent) startDatapath() (err error) {
	cfg := a.cfg
	driver := cfg.tunDriver
	if cfg.naive {
		driver = tunnel.DriverPlain
	}
	dev, mode, err := tunnel.OpenTUN(tunnel.TUNOptions{Name: cfg.tunName, MTU: cfg.mtu, FD: cfg.tunFD, Driver: driver, Naive: cfg.naive, Logger: a.log})
	if err != nil {
		return fmt.Errorf("open the TUN device: %w", err)
	}
	defer func() {
		if err != nil {
			dev.Close()
		}
	}()
	a.log.Info("TUN device", "name", dev.Name(), "mode", mode, "mtu", dev.MTU())
	if err := a.configureLink(dev.Name(), a.own.Load()); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			a.removeLink()
		}
	}()

	conn, err := tunnel.ListenUDP(tunnel.UDPOptions{
		Addr:           netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(a.port)),
		Naive:          cfg.naive,
		SteerChecksums: true,
		Logger:         a.log,
	})
	if err != nil {
		return fmt.Errorf("listen on UDP port %d: %w", a.port, err)
	}
	if err := a.table.Update(a.localSubnets(a.own.Load()), nil); err != nil {
		conn.Close()
		return err
	}
	a.tun, err = tunnel.New(tunnel.Options{
		Device: dev, Conn: conn, Table: &a.table, VNI: a.vni, LocalMAC: a.mac,
		MTU: cfg.mtu, Port: uint16(a.port), SourceCheck: cfg.sourceCheck, Naive: cfg.naive, Logger: a.log,
	})
	if err != nil {
		conn.Close()
		return err
	}
	return nil
}

func (a *agent) stopDatapath() {
	if err := a.tun.Close(); err != nil {
		a.log.Warn("close datapath", "err", err)
	}
	if a.masq != nil {
		if err := a.masq.Remove(context.Background()); err != nil {
			a.log.Warn("remove masquerade rules", "err", err)
		}
	}
	a.removeLink()
}

// configureLink gives the TUN our subnet's network address (as flannel
// gives flannel.1 10.244.62.0/32) and routes the overlay network through it.
func (a *agent) configureLink(name string, own *lease.Lease) error {
	lc := routes.LinkConfig{Name: name, MTU: a.cfg.mtu}
	if own.Subnet.IsValid() {
		lc.Addr = netip.PrefixFrom(own.Subnet.Masked().Addr(), 32)
		lc.Network = a.netCfg.Network
	}
	if own.IPv6Subnet.IsValid() {
		lc.IPv6Addr = netip.PrefixFrom(own.IPv6Subnet.Masked().Addr(), 128)
		lc.IPv6Network = a.netCfg.IPv6Network
	}
	link, err := routes.ConfigureLink(lc)
	if err != nil {
		if a.cfg.tunFD > 0 {
			// A device handed in by a privileged helper may be ours to use
			// but not to configure; the helper must have done it.
			a.log.Warn("cannot configure the TUN device handed in with --tun-fd; "+
				"its owner must give it the address and route", "addr", lc.Addr, "route", lc.Network, "err", err)
			return nil
		}
		return fmt.Errorf("configure %s: %w", name, err)
	}
	a.mu.Lock()
	a.link = link
	a.mu.Unlock()
	return nil
}

func (a *agent) removeLink() {
	a.mu.Lock()
	link := a.link
	a.link = nil
	a.mu.Unlock()
	if link != nil {
		if err := link.Remove(); err != nil {
			a.log.Warn("remove TUN addresses and routes", "err", err)
		}
	}
}

func (a *agent) localSubnets(own *lease.Lease) []netip.Prefix {
	var local []netip.Prefix
	for _, p := range []netip.Prefix{own.Subnet, own.IPv6Subnet} {
		if p.IsValid() {
			local = append(local, p.Masked())
		}
	}
	return local
}

// publish writes subnet.env and installs masquerading: the last steps
// before the node is ready.
func (a *agent) publish(ctx context.Context) error {
	own := a.own.Load()
	env := lease.NewSubnetEnv(a.netCfg, own, a.cfg.mtu, a.cfg.ipMasq)
	if err := lease.WriteSubnetEnv(a.cfg.subnetFile, env); err != nil {
		return err
	}
	if !a.cfg.ipMasq {
		return nil
	}
	m, err := newMasquerader(a.netCfg.Network, own.Subnet)
	if err != nil {
		return fmt.Errorf("--ip-masq: %w", err)
	}
	if err := m.Install(ctx); err != nil {
		return fmt.Errorf("--ip-masq: %w", err)
	}
	a.masq = m
	return nil
}

// setPeers installs a peer set delivered by Watch into the datapath's table.
func (a *agent) setPeers(ls []lease.Lease) {
	a.peers.Store(&ls)
	a.installPeers(a.own.Load(), ls)
}

func (a *agent) installPeers(own *lease.Lease, ls []lease.Lease) {
	peers := make([]routes.Peer, 0, len(ls))
	for _, l := range ls {
		if l.Key == own.Key || l.BackendType != "vxlan" {
			continue
		}
		mac, err := encap.MACFrom(l.VtepMAC)
		if err != nil {
			a.log.Warn("skipping lease with an unusable VtepMAC", "key", l.Key, "err", err)
			continue
		}
		if !l.PublicIP.IsValid() {
			a.log.Warn("skipping lease without an IPv4 PublicIP (IPv6 underlays are not carried yet)", "key", l.Key)
			continue
		}
		peers = append(peers, routes.Peer{
			Subnet: l.Subnet, IPv6Subnet: l.IPv6Subnet, MAC: mac,
			Endpoint:   netip.AddrPortFrom(l.PublicIP, uint16(a.port)),
			PublicIPv6: l.PublicIPv6,
		})
	}
	if err := a.table.Update(a.localSubnets(own), peers); err != nil {
		a.log.Warn("peer table", "err", err)
	}
	a.log.Debug("peer table updated", "peers", a.table.Load().Len())
}

// leaseChanged is called by Keep when our lease was renewed or replaced.
func (a *agent) leaseChanged(nl lease.Lease) {
	l := &nl
	old := a.own.Swap(l)
	if old.Subnet == l.Subnet && old.IPv6Subnet == l.IPv6Subnet {
		return
	}
	a.log.Error("our subnet changed: pods with addresses from the old subnet must be restarted",
		"old", old.Subnet, "new", l.Subnet, "old-ipv6", old.IPv6Subnet, "new-ipv6", l.IPv6Subnet)
	if peers := a.peers.Load(); peers != nil {
		a.installPeers(l, *peers)
	} else {
		a.installPeers(l, nil)
	}
	a.removeLink()
	if err := a.configureLink(a.tun.Stats().Device, l); err != nil {
		a.log.Error("reconfigure the TUN device for the new subnet", "err", err)
	}
	if err := a.publish(context.Background()); err != nil {
		a.log.Error("publish the new subnet", "err", err)
	}
}

// statusSnapshot reads the agent's state for /status and /metrics.
func (a *agent) statusSnapshot() agentStatus {
	st := agentStatus{
		SubnetManager: a.mgr.Name(),
		Node:          a.node,
		Version:       buildVersion(),
		Interface:     a.cfg.under.iface.Name,
		PublicIP:      a.cfg.under.publicIP.String(),
		VtepMAC:       a.mac.String(),
		VNI:           uint32(a.vni),
		Port:          a.port,
		MTU:           a.cfg.mtu,
		Drops:         map[string]map[string]uint64{},
		Totals:        map[string]traffic{},
		Peers:         []peerStatus{},
	}
	if a.cfg.under.publicIPv6.IsValid() {
		st.PublicIPv6 = a.cfg.under.publicIPv6.String()
	}
	if a.netCfg != nil {
		st.Network = a.netCfg.Network.String()
	}
	if own := a.own.Load(); own != nil {
		st.Subnet = own.Subnet.String()
		if own.IPv6Subnet.IsValid() {
			st.IPv6Subnet = own.IPv6Subnet.String()
		}
		if !own.Reservation() && !own.Expiration.IsZero() {
			exp := own.Expiration
			st.LeaseExpires = &exp
		}
	}
	st.MalformedPeers = a.mgr.MalformedPeers()
	if a.tun == nil {
		return st
	}
	nodes := map[netip.Prefix]string{}
	if peers := a.peers.Load(); peers != nil {
		for _, l := range *peers {
			if l.Node != "" {
				nodes[l.Subnet] = l.Node
				nodes[l.IPv6Subnet] = l.Node
			}
		}
	}
	ts := a.tun.Stats()
	st.TUN, st.TUNMode, st.GSO, st.GRO = ts.Device, ts.Mode.String(), ts.GSO, ts.GRO
	st.SourceCheck = ts.SourceCheck.String()
	st.ChecksumSteering = ts.ChecksumSteering
	st.Checksums = checksumCounts{OuterVerified: ts.In.Checksummed, PartialCompleted: ts.In.PartialChecksums}
	if ts.Naive {
		st.TUNMode += " (naive)"
	}
	for dir, ds := range map[string]tunnel.DirStats{"tx": ts.Out, "rx": ts.In} {
		st.Totals[dir] = traffic{Packets: ds.Packets, Bytes: ds.Bytes}
		reasons := make(map[string]uint64, len(ds.Drops))
		for r, n := range ds.Drops {
			reasons[r.String()] = n
		}
		st.Drops[dir] = reasons
	}
	for _, p := range a.table.Stats() {
		ps := peerStatus{
			Node:     nodes[p.Subnet],
			Subnet:   p.Subnet.String(),
			Endpoint: p.Endpoint.String(),
			VtepMAC:  p.MAC.String(),
			Tx:       traffic{Packets: p.TxPackets, Bytes: p.TxBytes},
			Rx:       traffic{Packets: p.RxPackets, Bytes: p.RxBytes},
		}
		if p.IPv6Subnet.IsValid() {
			ps.IPv6Subnet = p.IPv6Subnet.String()
		}
		if !p.LastRx.IsZero() {
			seen := p.LastRx
			ps.LastSeen = &seen
		}
		st.Peers = append(st.Peers, ps)
	}
	return st
}
