// Command overlay is a flannel-compatible node agent whose VXLAN datapath
// runs in userspace: a TUN device on the node side, batched UDP sockets on
// port 8472 on the underlay side, and subnet leases in etcd exactly as
// flannel's kernel vxlan backend keeps them, so both kinds of node can share
// one cluster.
package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "overlay: %v\n", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "overlay",
		Usage: "flannel-compatible overlay network agent with a userspace VXLAN datapath",
		Description: "overlay gives every node a pod subnet from flannel-style leases in etcd and carries\n" +
			"pod traffic between nodes in RFC 7348 VXLAN (VNI 1, UDP port 8472) without kernel VXLAN:\n" +
			"a TUN device captures pod-bound packets and batched UDP sockets carry them. It is wire-\n" +
			"and lease-compatible with flannel's kernel vxlan backend, so a cluster can mix both.",
		HideVersion:          true,
		EnableBashCompletion: true,
		Commands: []*cli.Command{
			upCommand(),
			demoCommand(),
			statusCommand(),
			configCommand(),
			leasesCommand(),
			etcdCommand(),
			mkDockerOptsCommand(),
			versionCommand(),
		},
	}
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version of overlay and of the Go toolchain that built it",
		Action: func(c *cli.Context) error {
			fmt.Fprintf(c.App.Writer, "overlay %s (%s, %s/%s)\n", buildVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}

// buildVersion prefers the -ldflags version, then the module version that
// `go install overlay/cmd/overlay@v...` records.
func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}
