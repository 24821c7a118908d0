package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func testStatus() agentStatus {
	exp := time.Now().Add(23 * time.Hour)
	seen := time.Now().Add(-3 * time.Second)
	return agentStatus{
		SubnetManager: "etcd", MalformedPeers: 3,
		Version: "test", Interface: "eth0", PublicIP: "172.30.250.11", Network: "10.244.0.0/16",
		Subnet: "10.244.62.0/24", VtepMAC: "3a:2e:6c:5d:b4:d6", VNI: 1, Port: 8472, MTU: 1450,
		TUN: "overlay0", TUNMode: "offload", GSO: true, GRO: true, SourceCheck: "strict", LeaseExpires: &exp,
		ChecksumSteering: true, Checksums: checksumCounts{OuterVerified: 41, PartialCompleted: 5},
		Peers: []peerStatus{
			{Subnet: "10.244.83.0/24", Endpoint: "172.30.250.12:8472", VtepMAC: "a6:c3:4f:6d:8b:b2", LastSeen: &seen,
				Tx: traffic{Packets: 10, Bytes: 840}, Rx: traffic{Packets: 9, Bytes: 756}},
			{Subnet: "10.244.7.0/24", Endpoint: "172.30.250.13:8472", VtepMAC: "a6:c3:4f:6d:8b:b3"},
		},
		Drops:  map[string]map[string]uint64{"rx": {"wrong_vni": 4, "short": 0, "unknown_source": 7, "spoofed_source": 0}, "tx": {"no_route": 2}},
		Totals: map[string]traffic{"tx": {Packets: 10, Bytes: 840}, "rx": {Packets: 9, Bytes: 756}},
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestStatusServer(t *testing.T) {
	s, err := newStatusServer("127.0.0.1:0", testStatus, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	base := "http://" + s.Addr().String()

	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	if code, _ := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before ready = %d, want 503", code)
	}
	s.ready.Store(true)
	if code, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after ready = %d, want 200", code)
	}

	code, metrics := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{
		`overlay_packets_total{direction="tx"} 10`,
		`overlay_bytes_total{direction="rx"} 756`,
		`overlay_drops_total{direction="rx",reason="wrong_vni"} 4`,
		`overlay_drops_total{direction="tx",reason="no_route"} 2`,
		`overlay_peers 2`,
		`overlay_peer_packets_total{direction="rx",peer="10.244.83.0/24"} 9`,
		`overlay_ready 1`,
		`overlay_drops_total{direction="rx",reason="unknown_source"} 7`,
		`overlay_drops_total{direction="rx",reason="spoofed_source"} 0`,
		`overlay_rx_outer_checksummed_total 41`,
		`overlay_rx_partial_checksums_total 5`,
		`overlay_info{checksum_steering="true",gro="true",gso="true",source_check="strict",subnet="10.244.62.0/24",subnet_manager="etcd",tun_mode="offload",version="test"} 1`,
		`overlay_malformed_peers_total 3`,
		`overlay_lease_expiry_seconds 8279`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	port, _ := strconv.Atoi(s.Addr().String()[strings.LastIndex(s.Addr().String(), ":")+1:])
	st, _, err := fetchStatus("127.0.0.1", port)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || len(st.Peers) != 2 || st.Peers[0].Subnet != "10.244.7.0/24" {
		t.Errorf("status = %+v, want ready with 2 peers sorted by subnet", st)
	}

	var out bytes.Buffer
	app := newApp()
	app.Writer = &out
	if err := app.Run([]string{"overlay", "status", "--healthz-port", strconv.Itoa(port)}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10.244.62.0/24 of 10.244.0.0/16", "offload", "172.30.250.12:8472", "3s ago", "rx wrong_vni: 4",
		"peers (2, 3 malformed records skipped)", "subnet manager:  etcd", "lease expires:",
		"source check:", "strict, refused: unknown_source 7, spoofed_source 0",
		"steering on, outer-checksummed datagrams 41 (inner not re-verified), partial completed 5"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("overlay status output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "short") {
		t.Errorf("zero drop counters should not be listed:\n%s", out.String())
	}
}

func TestStatusCommandNoAgent(t *testing.T) {
	app := newApp()
	app.Writer = io.Discard
	// Port 1 on loopback: nothing listens there.
	err := app.Run([]string{"overlay", "status", "--healthz-port", "1"})
	if err == nil || !strings.Contains(err.Error(), "no agent answers") {
		t.Errorf("err = %v, want a 'no agent answers' error", err)
	}
}

// TestStatusKube checks what /status and overlay status show with the kube
// subnet manager: the manager, the node and each peer's Node name.
func TestStatusKube(t *testing.T) {
	st := testStatus()
	st.SubnetManager, st.Node, st.LeaseExpires, st.MalformedPeers = "kube", "node-a", nil, 0
	st.Peers[0].Node, st.Peers[1].Node = "node-b", "node-c"
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"subnet_manager":"kube"`, `"node":"node-a"`, `"node":"node-b","subnet":"10.244.83.0/24"`, `"malformed_peers":0`} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("/status JSON lacks %s:\n%s", want, raw)
		}
	}
	var out bytes.Buffer
	if err := printStatus(&out, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"subnet manager:  kube, Node node-a", "NODE    SUBNET", "node-b  10.244.83.0/24", "node-c  10.244.7.0/24", "peers (2):"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("overlay status output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "lease expires") {
		t.Errorf("a kube lease does not expire:\n%s", out.String())
	}
}
