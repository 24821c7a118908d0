package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	clientv3 "go.etcd.io/etcd/client/v3"

	"overlay/lease/leasetest"
)

// runApp runs the CLI with args and returns what it printed.
func runApp(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.Run(append([]string{"overlay"}, args...))
	if errOut.Len() > 0 {
		t.Logf("stderr: %s", errOut.String())
	}
	return out.String(), err
}

func TestConfigAndLeasesCommands(t *testing.T) {
	srv := leasetest.NewServer(t)
	ep := "--etcd-endpoints=" + srv.ClientURL()
	prefix := "--etcd-prefix=/test/network"

	// A bad config is refused before anything is written.
	if _, err := runApp(t, "config", "set", ep, prefix, `{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}`); err == nil ||
		!strings.Contains(err.Error(), "host-gw") {
		t.Fatalf("config set with a host-gw backend: err = %v, want one naming host-gw", err)
	}
	if _, err := runApp(t, "config", "get", ep, prefix); err == nil {
		t.Fatal("config get found a config although the bad one must not have been written")
	}

	out, err := runApp(t, "config", "set", ep, prefix, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "/test/network/config") {
		t.Errorf("config set printed %q", out)
	}
	out, err = runApp(t, "config", "get", ep, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"SubnetLen":24`) || !strings.Contains(out, `"Network":"10.244.0.0/16"`) {
		t.Errorf("config get printed %q, want the effective config with SubnetLen 24", out)
	}

	// Two leases as flannel writes them: one bound to an etcd lease, one
	// reservation without TTL.
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gr, err := cli.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	v1 := `{"PublicIP":"172.30.250.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"3a:2e:6c:5d:b4:d6"}}`
	v2 := `{"PublicIP":"172.30.250.12","BackendType":"vxlan","BackendData":{"VtepMAC":"a6:c3:4f:6d:8b:b2"}}`
	if _, err := cli.Put(ctx, "/test/network/subnets/10.244.30.0-24", v1, clientv3.WithLease(gr.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/test/network/subnets/10.244.83.0-24", v2); err != nil {
		t.Fatal(err)
	}

	out, err = runApp(t, "leases", "list", ep, prefix, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rows []leaseView
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("leases list --json: %v\n%s", err, out)
	}
	if len(rows) != 2 || rows[0].Subnet != "10.244.30.0/24" || rows[0].VtepMAC != "3a:2e:6c:5d:b4:d6" ||
		rows[0].TTLSeconds < 3500 || rows[1].TTLSeconds != -1 || rows[1].PublicIP != "172.30.250.12" {
		t.Errorf("leases list --json = %+v", rows)
	}
	out, err = runApp(t, "leases", "list", ep, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "reservation") || !strings.Contains(out, "172.30.250.11") {
		t.Errorf("leases list table:\n%s", out)
	}

	// Delete by subnet, then by key form; a third delete finds nothing.
	if _, err := runApp(t, "leases", "delete", ep, prefix, "10.244.30.0/24"); err != nil {
		t.Fatal(err)
	}
	if _, err := runApp(t, "leases", "delete", ep, prefix, "/test/network/subnets/10.244.83.0-24"); err != nil {
		t.Fatal(err)
	}
	if _, err := runApp(t, "leases", "delete", ep, prefix, "10.244.83.0/24"); err == nil {
		t.Error("deleting a lease that no longer exists succeeded")
	}
	resp, err := cli.Get(ctx, "/test/network/subnets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Errorf("%d lease keys left after deleting both", resp.Count)
	}
	// The etcd lease of the deleted key is revoked, not orphaned.
	ttl, err := cli.TimeToLive(ctx, gr.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ttl.TTL != -1 {
		t.Errorf("etcd lease %x still alive (TTL %d) after its key was deleted", gr.ID, ttl.TTL)
	}
}

func TestPrefixEndingInConfigIsRejected(t *testing.T) {
	_, err := runApp(t, "leases", "list", "--etcd-endpoints=http://127.0.0.1:1", "--etcd-prefix=/test/network/config")
	if err == nil || !strings.Contains(err.Error(), "/test/network") || !strings.Contains(err.Error(), "ends in /config") {
		t.Errorf("err = %v, want advice to drop /config", err)
	}
}

func TestEtcdCommand(t *testing.T) {
	url := "http://127.0.0.1:" + itoa(leasetest.FreePort(t))
	peer := "http://127.0.0.1:" + itoa(leasetest.FreePort(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	app := newApp()
	app.Writer, app.ErrWriter = &bytes.Buffer{}, &bytes.Buffer{}
	// urfave/cli writes package-level flags (help, version) while it parses,
	// so the other commands may only run once etcd's action has started.
	started := make(chan struct{})
	for _, c := range app.Commands {
		if c.Name == "etcd" {
			action := c.Action
			c.Action = func(cc *cli.Context) error {
				close(started)
				return action(cc)
			}
		}
	}
	go func() {
		done <- app.RunContext(ctx, []string{"overlay", "etcd", "--data-dir", filepath.Join(t.TempDir(), "etcd"),
			"--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", peer, "--log-level", "error"})
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("overlay etcd returned %v after cancel", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("overlay etcd did not stop within 30 s of cancel")
		}
	}()
	select {
	case <-started:
	case err := <-done:
		done <- err // for the deferred check
		t.Fatalf("overlay etcd exited before starting: %v", err)
	}
	// Usable by the other commands once up.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := runApp(t, "config", "set", "--etcd-endpoints="+url, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("overlay etcd never served config set: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	out, err := runApp(t, "config", "get", "--etcd-endpoints="+url)
	if err != nil || !strings.Contains(out, "10.5.0.0/16") {
		t.Errorf("config get = %q, %v", out, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
