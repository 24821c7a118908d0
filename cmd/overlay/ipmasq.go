package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"time"
)

// Masquerading with flannel's FLANNEL_IPMASQ=true semantics:
//
//  1. pod -> pod anywhere in the overlay Network: untouched;
//  2. pod -> outside the Network (but not multicast): masqueraded, so the
//     world sees the node's address;
//  3. outside -> a pod of this node: untouched;
//  4. outside (the node itself, say) -> a pod elsewhere in the Network:
//     masqueraded, so the reply comes back through the overlay.
//
// The rules live in a table (nftables) or chain (iptables) of our own, made
// whole on every start and deleted on a clean stop, so nothing else on the
// node is touched. The tools are driven through their command lines: nft
// applies a ruleset file atomically, which is all we need.

const (
	nftTable      = "overlay"
	iptablesChain = "OVERLAY-POSTRTG"
	masqTimeout   = 10 * time.Second
)

var errNoFirewallTool = errors.New("neither nft nor iptables is installed")

// masquerader installs and removes the masquerade rules.
type masquerader struct {
	tool    string // "nft" or "iptables"
	network netip.Prefix
	subnet  netip.Prefix
}

// newMasquerader picks nft, else iptables. It fails with errNoFirewallTool
// when neither exists; the caller decides whether that is fatal.
func newMasquerader(network, subnet netip.Prefix) (*masquerader, error) {
	for _, tool := range []string{"nft", "iptables"} {
		if _, err := exec.LookPath(tool); err == nil {
			return &masquerader{tool: tool, network: network.Masked(), subnet: subnet.Masked()}, nil
		}
	}
	return nil, errNoFirewallTool
}

func (m *masquerader) nftRuleset() string {
	n, s := m.network.String(), m.subnet.String()
	return fmt.Sprintf(`table ip %[1]s {}
delete table ip %[1]s
table ip %[1]s {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr %[2]s ip daddr %[2]s return
		ip saddr %[2]s ip daddr != 224.0.0.0/4 masquerade fully-random
		ip saddr != %[2]s ip daddr %[3]s return
		ip saddr != %[2]s ip daddr %[2]s masquerade fully-random
	}
}
`, nftTable, n, s)
}

func (m *masquerader) iptablesRules() [][]string {
	n, s := m.network.String(), m.subnet.String()
	return [][]string{
		{"-s", n, "-d", n, "-j", "RETURN"},
		{"-s", n, "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE", "--random-fully"},
		{"!", "-s", n, "-d", s, "-j", "RETURN"},
		{"!", "-s", n, "-d", n, "-j", "MASQUERADE", "--random-fully"},
	}
}

// Install makes the rules whole; it is idempotent.
func (m *masquerader) Install(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, masqTimeout)
	defer cancel()
	if m.tool == "nft" {
		return run(ctx, strings.NewReader(m.nftRuleset()), "nft", "-f", "-")
	}
	// Our chain: create (ignore "exists"), flush, refill, then hook it in
	// once.
	_ = run(ctx, nil, "iptables", "-w", "-t", "nat", "-N", iptablesChain)
	if err := run(ctx, nil, "iptables", "-w", "-t", "nat", "-F", iptablesChain); err != nil {
		return err
	}
	for _, r := range m.iptablesRules() {
		args := append([]string{"-w", "-t", "nat", "-A", iptablesChain}, r...)
		if err := run(ctx, nil, "iptables", args...); err != nil {
			// iptables older than 1.6.2 lacks --random-fully.
			if r[len(r)-1] != "--random-fully" {
				return err
			}
			if err := run(ctx, nil, "iptables", args[:len(args)-1]...); err != nil {
				return err
			}
		}
	}
	jump := []string{"-w", "-t", "nat", "-C", "POSTROUTING", "-m", "comment", "--comment", "overlay masquerade", "-j", iptablesChain}
	if run(ctx, nil, "iptables", jump...) != nil {
		jump[3] = "-I"
		return run(ctx, nil, "iptables", jump...)
	}
	return nil
}

// Remove deletes our table or chain. It is idempotent.
func (m *masquerader) Remove(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, masqTimeout)
	defer cancel()
	if m.tool == "nft" {
		return run(ctx, strings.NewReader(fmt.Sprintf("table ip %[1]s {}\ndelete table ip %[1]s\n", nftTable)), "nft", "-f", "-")
	}
	jump := []string{"-w", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "overlay masquerade", "-j", iptablesChain}
	for i := 0; i < 16 && run(ctx, nil, "iptables", jump...) == nil; i++ {
		// Delete every copy of the jump, should a crash have left several.
	}
	_ = run(ctx, nil, "iptables", "-w", "-t", "nat", "-F", iptablesChain)
	_ = run(ctx, nil, "iptables", "-w", "-t", "nat", "-X", iptablesChain)
	return nil
}

func run(ctx context.Context, stdin *strings.Reader, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
