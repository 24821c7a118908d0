package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"overlay/lease"
	"overlay/lease/etcdembed"
)

// signalContext returns a context cancelled by the first SIGINT or SIGTERM.
// A second signal exits the process at once with status 1, for an operator
// whose clean shutdown is stuck.
func signalContext(parent context.Context, log *slog.Logger) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-ch:
			log.Info("shutting down; send the signal again to exit at once", "signal", s.String())
			cancel()
		case <-done:
			return
		}
		select {
		case <-ch:
			log.Warn("second signal: exiting without cleanup")
			os.Exit(1)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel()
	}
}

// etcdClientOptions reads the etcd flags shared by every command.
func etcdClientOptions(c *cli.Context, log *slog.Logger) lease.ClientOptions {
	return lease.ClientOptions{
		Endpoints:   strings.Split(c.String("etcd-endpoints"), ","),
		CAFile:      c.String("etcd-cafile"),
		CertFile:    c.String("etcd-certfile"),
		KeyFile:     c.String("etcd-keyfile"),
		Username:    c.String("etcd-username"),
		Password:    c.String("etcd-password"),
		DialTimeout: c.Duration("etcd-dial-timeout"),
		Logger:      log,
	}
}

// checkPrefix rejects a prefix that already ends in /config, a mistake the
// seed documents show operators making with flanneld (-etcd-prefix=.../config
// makes flanneld read .../config/config and wait forever).
func checkPrefix(prefix string) error {
	if !strings.HasPrefix(prefix, "/") {
		return fmt.Errorf("--etcd-prefix %q: must start with /", prefix)
	}
	if strings.HasSuffix(strings.TrimRight(prefix, "/"), "/config") {
		return fmt.Errorf("--etcd-prefix %q ends in /config: give the directory that holds config and subnets/ (e.g. %s)",
			prefix, strings.TrimSuffix(strings.TrimRight(prefix, "/"), "/config"))
	}
	return nil
}

// withManager connects to etcd as the flags say, runs fn, and closes the
// client.
func withManager(c *cli.Context, fn func(ctx context.Context, m *lease.Manager) error) error {
	log := slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := checkPrefix(c.String("etcd-prefix")); err != nil {
		return err
	}
	cli, err := lease.NewClient(etcdClientOptions(c, log))
	if err != nil {
		return err
	}
	defer cli.Close()
	m, err := lease.New(cli, lease.Options{Prefix: c.String("etcd-prefix"), Logger: log})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	return fn(ctx, m)
}

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "read or write the network config in etcd (<prefix>/config)",
		Subcommands: []*cli.Command{
			{
				Name:  "get",
				Usage: "print the network config as stored, and what overlay makes of it",
				Flags: etcdFlags(),
				Action: func(c *cli.Context) error {
					return withManager(c, func(ctx context.Context, m *lease.Manager) error {
						raw, err := m.RawConfig(ctx)
						if err != nil {
							return err
						}
						cfg, perr := lease.ParseConfig(raw)
						fmt.Fprintf(c.App.Writer, "%s = %s\n", m.ConfigKey(), strings.TrimSpace(string(raw)))
						if perr != nil {
							return fmt.Errorf("the stored config is invalid: %w", perr)
						}
						eff, err := json.Marshal(cfg)
						if err != nil {
							return err
						}
						fmt.Fprintf(c.App.Writer, "effective: %s\n", eff)
						return nil
					})
				},
			},
			{
				Name:      "set",
				Usage:     "validate a network config and write it (instead of etcdctl put/mk <prefix>/config)",
				ArgsUsage: "'<json>' | -  (e.g. '{\"Network\":\"10.244.0.0/16\",\"Backend\":{\"Type\":\"vxlan\"}}')",
				Flags:     etcdFlags(),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return errors.New("config set takes one argument: the JSON config, or - to read it from standard input")
					}
					data := []byte(c.Args().First())
					if c.Args().First() == "-" {
						var err error
						if data, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<20)); err != nil {
							return fmt.Errorf("read config from stdin: %w", err)
						}
					}
					// Validate before connecting, so a typo never waits on etcd.
					if _, err := lease.ParseConfig(data); err != nil {
						return fmt.Errorf("not written: %w", err)
					}
					return withManager(c, func(ctx context.Context, m *lease.Manager) error {
						cfg, err := m.SetConfig(ctx, data)
						if err != nil {
							return err
						}
						eff, _ := json.Marshal(cfg)
						fmt.Fprintf(c.App.Writer, "wrote %s\neffective: %s\n", m.ConfigKey(), eff)
						return nil
					})
				},
			},
		},
	}
}

// leaseView is one row of `overlay leases list`.
type leaseView struct {
	Key         string `json:"key"`
	Subnet      string `json:"subnet,omitempty"`
	IPv6Subnet  string `json:"ipv6Subnet,omitempty"`
	PublicIP    string `json:"publicIP,omitempty"`
	PublicIPv6  string `json:"publicIPv6,omitempty"`
	BackendType string `json:"backendType"`
	VtepMAC     string `json:"vtepMAC,omitempty"`
	// TTLSeconds is the time left; -1 for a reservation (a key without TTL).
	TTLSeconds int64 `json:"ttlSeconds"`
}

func viewLeases(ls []lease.Lease, now time.Time) []leaseView {
	out := make([]leaseView, 0, len(ls))
	for _, l := range ls {
		v := leaseView{Key: l.Key, BackendType: l.BackendType, VtepMAC: l.VtepMAC.String(), TTLSeconds: -1}
		if l.Subnet.IsValid() {
			v.Subnet = l.Subnet.String()
		}
		if l.IPv6Subnet.IsValid() {
			v.IPv6Subnet = l.IPv6Subnet.String()
		}
		if l.PublicIP.IsValid() {
			v.PublicIP = l.PublicIP.String()
		}
		if l.PublicIPv6.IsValid() {
			v.PublicIPv6 = l.PublicIPv6.String()
		}
		if !l.Reservation() {
			v.TTLSeconds = max(0, int64(l.Expiration.Sub(now).Seconds()))
		}
		out = append(out, v)
	}
	return out
}

func leasesCommand() *cli.Command {
	return &cli.Command{
		Name:  "leases",
		Usage: "list or delete subnet leases (instead of etcdctl ls/get/rm <prefix>/subnets)",
		Subcommands: []*cli.Command{
			{
				Name:  "list",
				Usage: "list every lease with subnet, public IP, VtepMAC, backend and time left",
				Flags: append(etcdFlags(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}),
				Action: func(c *cli.Context) error {
					return withManager(c, func(ctx context.Context, m *lease.Manager) error {
						ls, err := m.List(ctx)
						if err != nil {
							return err
						}
						rows := viewLeases(ls, time.Now())
						if c.Bool("json") {
							enc := json.NewEncoder(c.App.Writer)
							enc.SetIndent("", "  ")
							return enc.Encode(rows)
						}
						tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
						fmt.Fprintln(tw, "SUBNET\tPUBLIC IP\tVTEPMAC\tBACKEND\tTTL\tKEY")
						for _, r := range rows {
							sn := r.Subnet
							if r.IPv6Subnet != "" {
								sn = strings.Trim(sn+","+r.IPv6Subnet, ",")
							}
							pub := strings.Trim(r.PublicIP+","+r.PublicIPv6, ",")
							ttl := "reservation"
							if r.TTLSeconds >= 0 {
								ttl = (time.Duration(r.TTLSeconds) * time.Second).String()
							}
							fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", sn, pub, r.VtepMAC, r.BackendType, ttl, r.Key)
						}
						return tw.Flush()
					})
				},
			},
			{
				Name:      "delete",
				Usage:     "delete the lease of a subnet (a running node acquires a new one)",
				ArgsUsage: "SUBNET (e.g. 10.244.62.0/24 or 10.244.62.0-24)",
				Flags:     etcdFlags(),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return errors.New("leases delete takes one argument: the subnet, e.g. 10.244.62.0/24")
					}
					arg := c.Args().First()
					sn, err := netip.ParsePrefix(arg)
					if err != nil {
						// Accept the key form too, as `leases list` prints it.
						var err2 error
						if sn, _, err2 = lease.ParseSubnetKey(arg[strings.LastIndex(arg, "/")+1:]); err2 != nil {
							return fmt.Errorf("%q is neither a subnet such as 10.244.62.0/24 nor a lease key", arg)
						}
					}
					return withManager(c, func(ctx context.Context, m *lease.Manager) error {
						if err := m.Delete(ctx, sn); err != nil {
							return err
						}
						fmt.Fprintf(c.App.Writer, "deleted the lease of %s\n", sn.Masked())
						return nil
					})
				},
			},
		},
	}
}

func etcdCommand() *cli.Command {
	return &cli.Command{
		Name:  "etcd",
		Usage: "run a single-member etcd server (embedded) for demos, tests and small clusters",
		Description: "Runs etcd inside the overlay binary, with the same flag names as etcd itself, so a\n" +
			"small cluster or a test needs no separate etcd installation. For production, run a\n" +
			"real etcd cluster.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "name", Value: "overlay", Usage: "member name"},
			&cli.StringFlag{Name: "data-dir", Required: true, Usage: "data directory (created if missing)"},
			&cli.StringFlag{Name: "listen-client-urls", Value: "http://127.0.0.1:2379", Usage: "client URL to listen on (one)"},
			&cli.StringFlag{Name: "advertise-client-urls", Usage: "accepted for compatibility with etcd's flags; the listen URL is advertised"},
			&cli.StringFlag{Name: "listen-peer-urls", Usage: "peer URL (default: the client host, port 2380)"},
			&cli.StringFlag{Name: "cert-file", Usage: "TLS certificate for clients"},
			&cli.StringFlag{Name: "key-file", Usage: "TLS key for clients"},
			&cli.StringFlag{Name: "trusted-ca-file", Usage: "CA for client certificates (with --client-cert-auth)"},
			&cli.BoolFlag{Name: "client-cert-auth", Usage: "require client certificates"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		},
		Action: func(c *cli.Context) error {
			log, err := newLogger(c.App.ErrWriter, c.String("log-level"), "text")
			if err != nil {
				return err
			}
			if strings.Contains(c.String("listen-client-urls"), ",") {
				return errors.New("--listen-client-urls: overlay etcd listens on one URL")
			}
			ctx, stop := signalContext(c.Context, log)
			defer stop()
			srv, err := etcdembed.Start(ctx, etcdembed.Options{
				Name:           c.String("name"),
				Dir:            c.String("data-dir"),
				ClientURL:      c.String("listen-client-urls"),
				PeerURL:        c.String("listen-peer-urls"),
				CertFile:       c.String("cert-file"),
				KeyFile:        c.String("key-file"),
				TrustedCAFile:  c.String("trusted-ca-file"),
				ClientCertAuth: c.Bool("client-cert-auth"),
				Logger:         log,
			})
			if err != nil {
				return err
			}
			defer srv.Close()
			log.Info("etcd ready", "client-url", srv.ClientURL(), "data-dir", c.String("data-dir"))
			select {
			case <-ctx.Done():
				return nil
			case err := <-srv.Err():
				return fmt.Errorf("etcd: %w", err)
			}
		},
	}
}
