package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the running agent's lease, datapath mode, peers and drop counters",
		Description: "Asks the agent on this node (its --healthz-ip and --healthz-port) for its status:\n" +
			"the lease and when it expires, the MTU, the TUN mode, and per peer its subnet, endpoint,\n" +
			"VtepMAC, last frame seen and traffic; then the drops by reason.",
		Flags: append(statusFlags(), &cli.BoolFlag{Name: "json", Usage: "print the status as JSON"}),
		Action: func(c *cli.Context) error {
			if c.Int("healthz-port") == 0 {
				return fmt.Errorf("--healthz-port is 0: the agent serves no status endpoint")
			}
			st, raw, err := fetchStatus(c.String("healthz-ip"), c.Int("healthz-port"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				_, err := c.App.Writer.Write(raw)
				return err
			}
			return printStatus(c.App.Writer, st, time.Now())
		},
	}
}

func fetchStatus(ip string, port int) (agentStatus, []byte, error) {
	var st agentStatus
	url := "http://" + net.JoinHostPort(ip, strconv.Itoa(port)) + "/status"
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return st, nil, fmt.Errorf("no agent answers at %s (is `overlay up` running with this --healthz-port?): %w", url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return st, nil, fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return st, nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, nil, fmt.Errorf("%s: %w", url, err)
	}
	return st, raw, nil
}

func printStatus(w io.Writer, st agentStatus, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	ready := "not ready"
	if st.Ready {
		ready = "ready"
	}
	expiry := "never (reservation)"
	if st.LeaseExpires != nil {
		expiry = fmt.Sprintf("%s (in %s)", st.LeaseExpires.Format(time.RFC3339), st.LeaseExpires.Sub(now).Round(time.Second))
	}
	fmt.Fprintf(tw, "agent:\toverlay %s, %s\n", st.Version, ready)
	fmt.Fprintf(tw, "subnet:\t%s of %s", st.Subnet, st.Network)
	if st.IPv6Subnet != "" {
		fmt.Fprintf(tw, ", %s", st.IPv6Subnet)
	}
	if st.SubnetManager == "kube" {
		fmt.Fprintf(tw, "\nsubnet manager:\tkube, Node %s (its spec.podCIDR; does not expire)\n", st.Node)
	} else {
		fmt.Fprintf(tw, "\nsubnet manager:\t%s\n", cmp.Or(st.SubnetManager, "etcd"))
		fmt.Fprintf(tw, "lease expires:\t%s\n", expiry)
	}
	fmt.Fprintf(tw, "underlay:\t%s on %s, UDP port %d, VNI %d\n", st.PublicIP, st.Interface, st.Port, st.VNI)
	fmt.Fprintf(tw, "datapath:\t%s (%s), MTU %d, VtepMAC %s, GSO %s, GRO %s\n", st.TUN, st.TUNMode, st.MTU, st.VtepMAC, onOff(st.GSO), onOff(st.GRO))
	fmt.Fprintf(tw, "source check:\t%s, refused: unknown_source %d, spoofed_source %d\n", st.SourceCheck,
		st.Drops["rx"]["unknown_source"], st.Drops["rx"]["spoofed_source"])
	fmt.Fprintf(tw, "checksums:\tsteering %s, outer-checksummed datagrams %d (inner not re-verified), partial completed %d\n",
		onOff(st.ChecksumSteering), st.Checksums.OuterVerified, st.Checksums.PartialCompleted)
	tx, rx := st.Totals["tx"], st.Totals["rx"]
	fmt.Fprintf(tw, "traffic:\ttx %d packets %s, rx %d packets %s\n", tx.Packets, humanBytes(tx.Bytes), rx.Packets, humanBytes(rx.Bytes))
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintf(w, "\npeers (%d", len(st.Peers))
	if st.MalformedPeers > 0 {
		fmt.Fprintf(w, ", %d malformed records skipped", st.MalformedPeers)
	}
	fmt.Fprintln(w, "):")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	withNode := st.SubnetManager == "kube"
	if withNode {
		fmt.Fprint(tw, "NODE\t")
	}
	fmt.Fprintln(tw, "SUBNET\tENDPOINT\tVTEPMAC\tLAST SEEN\tTX PKTS\tTX BYTES\tRX PKTS\tRX BYTES")
	for _, p := range st.Peers {
		seen := "never"
		if p.LastSeen != nil {
			seen = now.Sub(*p.LastSeen).Round(time.Second).String() + " ago"
		}
		if withNode {
			fmt.Fprintf(tw, "%s\t", cmp.Or(p.Node, "-"))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\n", p.Subnet, p.Endpoint, p.VtepMAC, seen,
			p.Tx.Packets, humanBytes(p.Tx.Bytes), p.Rx.Packets, humanBytes(p.Rx.Bytes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	var drops []string
	for dir, reasons := range st.Drops {
		for reason, n := range reasons {
			if n > 0 {
				drops = append(drops, fmt.Sprintf("  %s %s: %d", dir, reason, n))
			}
		}
	}
	sort.Strings(drops)
	if len(drops) == 0 {
		_, err := fmt.Fprintln(w, "\ndrops: none")
		return err
	}
	_, err := fmt.Fprintf(w, "\ndrops:\n%s\n", strings.Join(drops, "\n"))
	return err
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
