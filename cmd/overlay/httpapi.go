package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// agentStatus is what `overlay status` shows and /status serves: one JSON
// document, taken at one moment, about the node and each of its peers.
type agentStatus struct {
	// SubnetManager is where the lease and the peers come from: "etcd" or
	// "kube" (--kube-subnet-mgr).
	SubnetManager string `json:"subnet_manager"`
	// Node is this node's Node name with the kube subnet manager.
	Node       string `json:"node,omitempty"`
	Version    string `json:"version"`
	Ready      bool   `json:"ready"`
	Interface  string `json:"interface"`
	PublicIP   string `json:"publicIP"`
	PublicIPv6 string `json:"publicIPv6,omitempty"`
	Network    string `json:"network"`
	Subnet     string `json:"subnet"`
	IPv6Subnet string `json:"ipv6Subnet,omitempty"`
	VtepMAC    string `json:"vtepMAC"`
	VNI        uint32 `json:"vni"`
	Port       int    `json:"port"`
	MTU        int    `json:"mtu"`
	TUN        string `json:"tun"`
	TUNMode    string `json:"tunMode"`
	GSO        bool   `json:"gso"`
	GRO        bool   `json:"gro"`
	// SourceCheck is the check on received frames' senders (--source-check);
	// its drops are rx unknown_source and spoofed_source.
	SourceCheck string `json:"sourceCheck"`
	// ChecksumSteering reports that datagrams with an outer UDP checksum
	// are received on a socket of their own and their inner checksums
	// trusted; Checksums counts what the receive path did with checksums.
	ChecksumSteering bool           `json:"checksumSteering"`
	Checksums        checksumCounts `json:"checksums"`
	LeaseExpires     *time.Time     `json:"leaseExpires,omitempty"` // nil for a reservation and with the kube manager
	Peers            []peerStatus   `json:"peers"`
	// MalformedPeers counts peer records (leases, Nodes) skipped because
	// they cannot be used, each version once.
	MalformedPeers uint64 `json:"malformed_peers"`
	// Drops counts dropped packets by direction ("tx": TUN to UDP, "rx":
	// UDP to TUN) and reason.
	Drops map[string]map[string]uint64 `json:"drops"`
	// Totals counts packets and bytes carried, by direction.
	Totals map[string]traffic `json:"totals"`
}

// checksumCounts says how received frames' checksums were handled.
type checksumCounts struct {
	// OuterVerified counts datagrams that carried an outer UDP checksum
	// the kernel verified, whose inner checksums were not verified again
	// (agents send them; kernel VTEPs over IPv4 usually send none).
	OuterVerified uint64 `json:"outerVerified"`
	// PartialCompleted counts inner packets whose transport checksum a
	// kernel VTEP on a virtual link left unfinished, completed here.
	PartialCompleted uint64 `json:"partialCompleted"`
}

type traffic struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

type peerStatus struct {
	// Node is the peer's Node name with the kube subnet manager.
	Node       string     `json:"node,omitempty"`
	Subnet     string     `json:"subnet"`
	IPv6Subnet string     `json:"ipv6Subnet,omitempty"`
	Endpoint   string     `json:"endpoint"`
	VtepMAC    string     `json:"vtepMAC"`
	LastSeen   *time.Time `json:"lastSeen,omitempty"` // last frame received from it
	Tx         traffic    `json:"tx"`
	Rx         traffic    `json:"rx"`
}

// statusServer serves /healthz, /readyz, /metrics and /status.
type statusServer struct {
	status func() agentStatus
	ready  atomic.Bool
	srv    *http.Server
	ln     net.Listener
	log    *slog.Logger
}

func newStatusServer(addr string, status func() agentStatus, log *slog.Logger) (*statusServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health endpoint: %w", err)
	}
	s := &statusServer{status: status, ln: ln, log: log}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), s)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready: no lease or subnet.env yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.snapshot())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s, nil
}

// Addr is the address the server listens on.
func (s *statusServer) Addr() net.Addr { return s.ln.Addr() }

// Serve answers until Shutdown; it returns nil after a Shutdown.
func (s *statusServer) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("health endpoint: %w", err)
	}
	return nil
}

func (s *statusServer) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func (s *statusServer) snapshot() agentStatus {
	st := s.status()
	st.Ready = s.ready.Load()
	sort.Slice(st.Peers, func(i, j int) bool { return st.Peers[i].Subnet < st.Peers[j].Subnet })
	return st
}

var (
	descPackets = prometheus.NewDesc("overlay_packets_total", "Packets carried by the datapath, by direction (tx: TUN to UDP, rx: UDP to TUN).", []string{"direction"}, nil)
	descBytes   = prometheus.NewDesc("overlay_bytes_total", "Inner IP bytes carried by the datapath, by direction.", []string{"direction"}, nil)
	descDrops   = prometheus.NewDesc("overlay_drops_total", "Packets dropped by the datapath, by direction and reason.", []string{"direction", "reason"}, nil)
	descPeers   = prometheus.NewDesc("overlay_peers", "Peers in the datapath's table.", nil, nil)
	descPeerPkt = prometheus.NewDesc("overlay_peer_packets_total", "Packets exchanged with a peer, by direction.", []string{"peer", "direction"}, nil)
	descPeerB   = prometheus.NewDesc("overlay_peer_bytes_total", "Inner IP bytes exchanged with a peer, by direction.", []string{"peer", "direction"}, nil)
	descExpiry  = prometheus.NewDesc("overlay_lease_expiry_seconds", "Seconds until the node's subnet lease expires (absent for a reservation).", nil, nil)
	descReady   = prometheus.NewDesc("overlay_ready", "1 once the lease is held, the datapath runs and subnet.env is written.", nil, nil)
	descInfo    = prometheus.NewDesc("overlay_info", "The agent's build, subnet manager and datapath mode.", []string{"version", "subnet", "tun_mode", "gso", "gro", "source_check", "checksum_steering", "subnet_manager"}, nil)
	descOuterCk = prometheus.NewDesc("overlay_rx_outer_checksummed_total", "Datagrams received with an outer UDP checksum the kernel verified; their inner checksums were not verified again.", nil, nil)
	descPartial = prometheus.NewDesc("overlay_rx_partial_checksums_total", "Inner packets whose transport checksum a kernel VTEP on a virtual link left unfinished, completed by the agent.", nil, nil)
	descBadPeer = prometheus.NewDesc("overlay_malformed_peers_total", "Peer records (etcd leases, Kubernetes Nodes) skipped because they cannot be used, each version once.", nil, nil)
)

// Describe implements prometheus.Collector.
func (s *statusServer) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descDrops, descPeers, descPeerPkt, descPeerB, descExpiry, descReady, descInfo, descBadPeer, descOuterCk, descPartial} {
		ch <- d
	}
}

// Collect implements prometheus.Collector, reading the counters at scrape
// time.
func (s *statusServer) Collect(ch chan<- prometheus.Metric) {
	st := s.snapshot()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for dir, t := range st.Totals {
		counter(descPackets, t.Packets, dir)
		counter(descBytes, t.Bytes, dir)
	}
	for dir, reasons := range st.Drops {
		for reason, n := range reasons {
			counter(descDrops, n, dir, reason)
		}
	}
	gauge(descPeers, float64(len(st.Peers)))
	for _, p := range st.Peers {
		counter(descPeerPkt, p.Tx.Packets, p.Subnet, "tx")
		counter(descPeerPkt, p.Rx.Packets, p.Subnet, "rx")
		counter(descPeerB, p.Tx.Bytes, p.Subnet, "tx")
		counter(descPeerB, p.Rx.Bytes, p.Subnet, "rx")
	}
	if st.LeaseExpires != nil {
		gauge(descExpiry, time.Until(*st.LeaseExpires).Seconds())
	}
	ready := 0.0
	if st.Ready {
		ready = 1
	}
	gauge(descReady, ready)
	gauge(descInfo, 1, st.Version, st.Subnet, st.TUNMode, fmt.Sprint(st.GSO), fmt.Sprint(st.GRO), st.SourceCheck, fmt.Sprint(st.ChecksumSteering), st.SubnetManager)
	counter(descBadPeer, st.MalformedPeers)
	counter(descOuterCk, st.Checksums.OuterVerified)
	counter(descPartial, st.Checksums.PartialCompleted)
}
