package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"overlay/lease"
)

// mkDockerOptsCommand replaces flannel's mk-docker-opts.sh with the same
// options and the same output, byte for byte, so ExecStartPost= and
// EnvironmentFile= lines written for flanneld keep working.
func mkDockerOptsCommand() *cli.Command {
	return &cli.Command{
		Name:  "mk-docker-opts",
		Usage: "write Docker daemon options from subnet.env (flannel's mk-docker-opts.sh)",
		Description: "Reads the subnet environment the agent wrote and writes Docker's --bip, --mtu and\n" +
			"--ip-masq options to an environment file, as flannel's mk-docker-opts.sh does.\n" +
			"With neither -i nor -c, both are written.",
		UseShortOptionHandling: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "f", Value: defaultSubnetFile, Usage: "path to the flannel env file"},
			&cli.StringFlag{Name: "d", Value: "/run/docker_opts.env", Usage: "path of the Docker env file to write"},
			&cli.BoolFlag{Name: "i", Usage: "output each Docker option as an individual variable, e.g. DOCKER_OPT_MTU=1450"},
			&cli.BoolFlag{Name: "c", Usage: "output the combined Docker options into the DOCKER_OPTS variable"},
			&cli.StringFlag{Name: "k", Value: "DOCKER_OPTS", Usage: "name of the combined options variable"},
			&cli.BoolFlag{Name: "m", Usage: "do not output --ip-masq (for older Docker versions)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("mk-docker-opts takes no arguments, got %q", c.Args().Slice())
			}
			data, err := os.ReadFile(c.String("f"))
			if err != nil {
				return fmt.Errorf("read flannel env file: %w", err)
			}
			env, err := parseEnvFile(data)
			if err != nil {
				return fmt.Errorf("%s: %w", c.String("f"), err)
			}
			key := c.String("k")
			if !validEnvName(key) {
				return fmt.Errorf("-k %q is not a valid variable name", key)
			}
			out := dockerOpts(env, dockerOptsConfig{
				individual: c.Bool("i"),
				combined:   c.Bool("c"),
				key:        key,
				noMasq:     c.Bool("m"),
				existing:   os.Getenv(key),
			})
			return lease.WriteFileAtomic(c.String("d"), out, 0o644)
		},
	}
}

type dockerOptsConfig struct {
	individual, combined bool
	key                  string // name of the combined variable
	noMasq               bool
	existing             string // the combined variable's value in our environment
}

// dockerOpts renders the Docker env file as mk-docker-opts.sh does: the
// DOCKER_OPT_* variables in the order `set` lists them (alphabetical), each
// quoted, then the combined variable, which starts with whatever value the
// variable already had in the environment followed by a space, and has a
// space after every option.
func dockerOpts(env map[string]string, cfg dockerOptsConfig) []byte {
	if !cfg.individual && !cfg.combined {
		cfg.individual, cfg.combined = true, true
	}
	type opt struct{ name, value string }
	var opts []opt // alphabetical by name, as bash's `set` prints them
	if s := env["FLANNEL_SUBNET"]; s != "" {
		opts = append(opts, opt{"DOCKER_OPT_BIP", "--bip=" + s})
	}
	if !cfg.noMasq {
		// The overlay masquerades (FLANNEL_IPMASQ=true): Docker must not.
		masq := "true"
		if env["FLANNEL_IPMASQ"] == "true" {
			masq = "false"
		}
		opts = append(opts, opt{"DOCKER_OPT_IPMASQ", "--ip-masq=" + masq})
	}
	if s := env["FLANNEL_IPV6_SUBNET"]; s != "" {
		opts = append(opts, opt{"DOCKER_OPT_IPV6", "--ipv6 --fixed-cidr-v6=" + s})
	}
	if s := env["FLANNEL_MTU"]; s != "" {
		opts = append(opts, opt{"DOCKER_OPT_MTU", "--mtu=" + s})
	}
	var b bytes.Buffer
	combined := cfg.existing + " "
	for _, o := range opts {
		if cfg.individual {
			fmt.Fprintf(&b, "%s=%q\n", o.name, o.value)
		}
		combined += o.value + " "
	}
	if cfg.combined {
		fmt.Fprintf(&b, "%s=%q\n", cfg.key, combined)
	}
	return b.Bytes()
}

// parseEnvFile reads a shell environment file of the kind flanneld and
// overlay write: KEY=VALUE lines, with optional `export `, optional single
// or double quotes around the value, blank lines and # comments.
func parseEnvFile(data []byte) (map[string]string, error) {
	env := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok || !validEnvName(k) {
			return nil, fmt.Errorf("line %d: %q is not KEY=VALUE", n, line)
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		env[k] = v
	}
	return env, sc.Err()
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
