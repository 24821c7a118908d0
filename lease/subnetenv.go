package lease

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultSubnetEnvPath is where flannel writes subnet.env.
const DefaultSubnetEnvPath = "/run/flannel/subnet.env"

// SubnetEnv is the content of flannel's subnet.env. The zero value is an
// empty file; zero prefixes are left out when writing.
type SubnetEnv struct {
	// Network is FLANNEL_NETWORK, e.g. 10.244.0.0/16.
	Network netip.Prefix
	// Subnet is FLANNEL_SUBNET: the node's first host address with the
	// subnet's prefix length, e.g. 10.244.62.1/24 (Subnet.Masked() is the
	// subnet itself).
	Subnet netip.Prefix
	// IPv6Network and IPv6Subnet are FLANNEL_IPV6_NETWORK and
	// FLANNEL_IPV6_SUBNET, in the same forms.
	IPv6Network netip.Prefix
	IPv6Subnet  netip.Prefix
	// MTU is FLANNEL_MTU, the pod interface MTU.
	MTU int
	// IPMasq is FLANNEL_IPMASQ.
	IPMasq bool
}

// NewSubnetEnv returns the subnet.env for lease l under cfg.
func NewSubnetEnv(cfg *Config, l *Lease, mtu int, ipMasq bool) SubnetEnv {
	env := SubnetEnv{MTU: mtu, IPMasq: ipMasq}
	if cfg.EnableIPv4 && l.Subnet.IsValid() {
		env.Network, env.Subnet = cfg.Network, firstHost(l.Subnet)
	}
	if cfg.EnableIPv6 && l.IPv6Subnet.IsValid() {
		env.IPv6Network, env.IPv6Subnet = cfg.IPv6Network, firstHost(l.IPv6Subnet)
	}
	return env
}

// Marshal returns the file content exactly as flannel writes it: one
// KEY=value line each, no quotes, no export, IPv4 lines, then IPv6 lines,
// then MTU and IPMASQ.
func (e SubnetEnv) Marshal() []byte {
	var b bytes.Buffer
	if e.Network.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", e.Network)
	}
	if e.Subnet.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", e.Subnet)
	}
	if e.IPv6Network.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\n", e.IPv6Network)
	}
	if e.IPv6Subnet.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_IPV6_SUBNET=%s\n", e.IPv6Subnet)
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", e.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%t\n", e.IPMasq)
	return b.Bytes()
}

// WriteSubnetEnv writes env to path atomically with WriteFileAtomic, mode
// 0644. Readers (the CNI plugin, mk-docker-opts) never see a partial file.
func WriteSubnetEnv(path string, env SubnetEnv) error {
	if err := WriteFileAtomic(path, env.Marshal(), 0o644); err != nil {
		return fmt.Errorf("write subnet.env: %w", err)
	}
	return nil
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory, fsynced and renamed over path, so a reader sees the old file or
// the new one, never part of one. Missing directories are created. It is
// how the agent's environment files (subnet.env, mk-docker-opts' output)
// are written.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err = f.Write(data); err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// ReadSubnetEnv reads a subnet.env written by flannel or WriteSubnetEnv. It
// tolerates what a shell would (blank lines, comments, "export ", quotes) and
// ignores unknown variables; a known variable with a bad value is an error
// naming the file, line and value. A missing file gives an error satisfying
// errors.Is(err, fs.ErrNotExist).
func ReadSubnetEnv(path string) (SubnetEnv, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return SubnetEnv{}, fmt.Errorf("read subnet.env: %w", err)
	}
	env, err := ParseSubnetEnv(data)
	if err != nil {
		return SubnetEnv{}, fmt.Errorf("read subnet.env %s: %w", path, err)
	}
	return env, nil
}

// ParseSubnetEnv parses subnet.env content; see ReadSubnetEnv.
func ParseSubnetEnv(data []byte) (SubnetEnv, error) {
	var env SubnetEnv
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return SubnetEnv{}, fmt.Errorf("line %d: %q is not KEY=value", n, line)
		}
		k = strings.TrimSpace(k)
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		var err error
		switch k {
		case "FLANNEL_NETWORK":
			env.Network, err = parseEnvPrefix(v, true, true)
		case "FLANNEL_SUBNET":
			env.Subnet, err = parseEnvPrefix(v, true, false)
		case "FLANNEL_IPV6_NETWORK":
			env.IPv6Network, err = parseEnvPrefix(v, false, true)
		case "FLANNEL_IPV6_SUBNET":
			env.IPv6Subnet, err = parseEnvPrefix(v, false, false)
		case "FLANNEL_MTU":
			env.MTU, err = strconv.Atoi(v)
			if err == nil && (env.MTU < 68 || env.MTU > 65535) {
				err = fmt.Errorf("MTU out of range [68, 65535]")
			}
		case "FLANNEL_IPMASQ":
			env.IPMasq, err = strconv.ParseBool(v)
		default:
			continue
		}
		if err != nil {
			return SubnetEnv{}, fmt.Errorf("line %d: %s=%s: %v", n, k, v, err)
		}
	}
	if err := sc.Err(); err != nil {
		return SubnetEnv{}, err
	}
	return env, nil
}

func parseEnvPrefix(s string, want4, network bool) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4() != want4 || p.Addr().Is4In6() || p.Addr().Zone() != "" {
		fam := "IPv6"
		if want4 {
			fam = "IPv4"
		}
		return netip.Prefix{}, fmt.Errorf("not an %s prefix", fam)
	}
	if network {
		p = p.Masked()
	}
	return p, nil
}
