package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"overlay/e2e/cluster"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "build a local multi-node overlay cluster in network namespaces, show it working, tear it down (root)",
		Description: "Creates an underlay bridge and N node namespaces, runs an embedded etcd (overlay etcd)\n" +
			"and one `overlay up` agent per node, puts pods behind each node as the CNI bridge plugin\n" +
			"would from subnet.env, prints the leases as etcdctl shows them, pings every pod from every\n" +
			"other, measures throughput between two nodes, and removes everything, also on Ctrl-C.\n" +
			"Uses only 172.30.250.0/24 and 10.244.0.0/16 inside the namespaces it creates.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "nodes", Value: 3, Usage: "number of nodes (2 to 9)"},
			&cli.DurationFlag{Name: "throughput", Value: 3 * time.Second, Usage: "length of the throughput check"},
			&cli.StringFlag{Name: "workdir", Usage: "keep etcd data and node logs here (default: a temporary directory, removed on success)"},
			&cli.StringSliceFlag{Name: "agent-arg", Usage: "extra argument for every `overlay up` (repeatable), e.g. --agent-arg=--naive"},
			&cli.BoolFlag{Name: "kube", Usage: "kube mode: a real kube-apiserver (built from this source tree's e2e/kube once, then cached), Nodes with pod CIDRs, agents with --kube-subnet-mgr"},
		},
		Action: func(c *cli.Context) error {
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the overlay binary: %w", err)
			}
			ctx, stop := signalContext(c.Context, slog.New(slog.NewTextHandler(c.App.ErrWriter, nil)))
			defer stop()
			err = cluster.Demo(ctx, c.App.Writer, cluster.DemoOptions{
				Binary:     self,
				Nodes:      c.Int("nodes"),
				Throughput: c.Duration("throughput"),
				WorkDir:    c.String("workdir"),
				AgentArgs:  c.StringSlice("agent-arg"),
				Kube:       c.Bool("kube"),
			})
			if err != nil && ctx.Err() != nil {
				return fmt.Errorf("interrupted; everything the demo created was removed: %w", context.Cause(ctx))
			}
			return err
		},
	}
}
