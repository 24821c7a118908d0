package lease

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// Defaults that flannel applies to a network config and that overlay keeps.
const (
	// DefaultVNI is the VXLAN network identifier flannel's vxlan backend uses
	// when Backend.VNI is absent or 0.
	DefaultVNI = 1
	// DefaultPort is the UDP port of Linux kernel VXLAN (and flannel) when
	// Backend.Port is absent or 0. IANA's 4789 is not the default: the Linux
	// kernel predates the assignment and flannel kept 8472.
	DefaultPort = 8472
	// BackendVXLAN is the only Backend.Type overlay accepts.
	BackendVXLAN = "vxlan"

	maxVNI = 1<<24 - 1
)

// Config is the cluster-wide network configuration stored in <prefix>/config,
// with flannel's defaults applied. ParseConfig returns it validated; the zero
// value is not a valid config. A Config is not modified after ParseConfig and
// may be shared between goroutines.
type Config struct {
	// EnableIPv4 reports whether IPv4 pod subnets are allocated (default true).
	EnableIPv4 bool
	// Network is the IPv4 pod network, e.g. 10.244.0.0/16.
	Network netip.Prefix
	// SubnetLen is the prefix length of each node's IPv4 subnet.
	SubnetLen int
	// SubnetMin and SubnetMax bound the IPv4 subnets handed out (inclusive);
	// both are aligned on SubnetLen.
	SubnetMin, SubnetMax netip.Addr

	// EnableIPv6 reports whether IPv6 pod subnets are allocated.
	EnableIPv6 bool
	// IPv6Network is the IPv6 pod network, e.g. fc00::/48.
	IPv6Network netip.Prefix
	// IPv6SubnetLen is the prefix length of each node's IPv6 subnet.
	IPv6SubnetLen int
	// IPv6SubnetMin and IPv6SubnetMax bound the IPv6 subnets handed out.
	IPv6SubnetMin, IPv6SubnetMax netip.Addr

	// Backend is the backend section. Type is always "vxlan".
	Backend Backend
}

// Backend is the "Backend" object of the network config, vxlan options only.
type Backend struct {
	Type string
	// VNI is the VXLAN network identifier (default 1).
	VNI uint32
	// Port is the UDP destination port (0 in the JSON means 8472).
	Port uint16
}

// ConfigError reports a bad network config value. Field is the JSON field
// (e.g. "SubnetLen" or "Backend.Type"), Value the offending value as written.
type ConfigError struct {
	Field  string
	Value  string
	Reason string
}

func (e *ConfigError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("%s: %s", e.Field, e.Reason)
	}
	return fmt.Sprintf("%s %s: %s", e.Field, e.Value, e.Reason)
}

func cfgErr(field, value, format string, args ...any) error {
	return &ConfigError{Field: field, Value: value, Reason: fmt.Sprintf(format, args...)}
}

// rawConfig mirrors flannel's JSON. encoding/json matches field names case
// insensitively, exactly as flannel (which also uses encoding/json) reads them.
type rawConfig struct {
	Network       *string
	SubnetLen     *json.Number
	SubnetMin     *string
	SubnetMax     *string
	EnableIPv4    *bool
	EnableIPv6    *bool
	IPv6Network   *string
	IPv6SubnetLen *json.Number
	IPv6SubnetMin *string
	IPv6SubnetMax *string
	Backend       json.RawMessage
}

type rawBackend struct {
	Type *string
	VNI  *json.Number
	Port *json.Number
	GBP  bool
}

// ParseConfig decodes flannel's network config JSON, applies flannel's
// defaults and validates it. Errors are *ConfigError values (wrapped) naming
// the field and the bad value.
func ParseConfig(data []byte) (*Config, error) {
	var raw rawConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("invalid JSON: trailing data after the config object")
	}
	cfg := &Config{EnableIPv4: true}
	if raw.EnableIPv4 != nil {
		cfg.EnableIPv4 = *raw.EnableIPv4
	}
	if raw.EnableIPv6 != nil {
		cfg.EnableIPv6 = *raw.EnableIPv6
	}
	if !cfg.EnableIPv4 && !cfg.EnableIPv6 {
		return nil, cfgErr("EnableIPv4", "false", "and EnableIPv6 is not true: at least one address family must be enabled")
	}
	if cfg.EnableIPv4 {
		f := family{name: "", bits: 32, defaultLen: 24, defaultBelow: 23, maxLen: 30}
		var err error
		cfg.Network, cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax, err = f.parse(raw.Network, raw.SubnetLen, raw.SubnetMin, raw.SubnetMax)
		if err != nil {
			return nil, err
		}
	}
	if cfg.EnableIPv6 {
		f := family{name: "IPv6", bits: 128, defaultLen: 64, defaultBelow: 63, maxLen: 126}
		var err error
		cfg.IPv6Network, cfg.IPv6SubnetLen, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax, err = f.parse(raw.IPv6Network, raw.IPv6SubnetLen, raw.IPv6SubnetMin, raw.IPv6SubnetMax)
		if err != nil {
			return nil, err
		}
	}
	b, err := parseBackend(raw.Backend)
	if err != nil {
		return nil, err
	}
	cfg.Backend = b
	return cfg, nil
}

// family holds the per-address-family rules flannel applies.
type family struct {
	name         string // "" for IPv4, "IPv6" for IPv6 (field name prefix)
	bits         int
	defaultLen   int // subnet length for networks shorter than defaultBelow
	defaultBelow int // networks with a prefix shorter than this get defaultLen; others get +2
	maxLen       int // longest subnet length (room for a gateway and a host)
}

func (f family) parse(network *string, subnetLen *json.Number, min, max *string) (netip.Prefix, int, netip.Addr, netip.Addr, error) {
	var zp netip.Prefix
	var za netip.Addr
	fNet, fLen, fMin, fMax := f.name+"Network", f.name+"SubnetLen", f.name+"SubnetMin", f.name+"SubnetMax"
	if network == nil || *network == "" {
		return zp, 0, za, za, cfgErr(fNet, "", "missing; it is required when %s is enabled", f.familyName())
	}
	n, err := netip.ParsePrefix(*network)
	if err != nil || n.Addr().Zone() != "" {
		return zp, 0, za, za, cfgErr(fNet, strconv.Quote(*network), "is not a CIDR such as %s", f.example())
	}
	if n.Addr().Is4In6() || n.Addr().BitLen() != f.bits {
		return zp, 0, za, za, cfgErr(fNet, strconv.Quote(*network), "is not an %s network", f.familyName())
	}
	// flannel parses Network with net.ParseCIDR, which drops host bits.
	n = n.Masked()
	var sl int
	if subnetLen != nil {
		v, err := subnetLen.Int64()
		if err != nil || v <= 0 {
			return zp, 0, za, za, cfgErr(fLen, subnetLen.String(), "is not a positive integer")
		}
		if v > int64(f.maxLen) {
			return zp, 0, za, za, cfgErr(fLen, subnetLen.String(), "is longer than /%d, which leaves no room for a gateway and a host", f.maxLen)
		}
		sl = int(v)
		if sl < n.Bits()+2 {
			return zp, 0, za, za, cfgErr(fLen, subnetLen.String(), "must be at least %s prefix length + 2 (%d) so that %s %s holds at least four subnets", fNet, n.Bits()+2, fNet, n)
		}
	} else {
		switch {
		case n.Bits() < f.defaultBelow:
			sl = f.defaultLen
		case n.Bits()+2 <= f.maxLen:
			sl = n.Bits() + 2
		default:
			return zp, 0, za, za, cfgErr(fNet, n.String(), "is too small: the longest usable network prefix is /%d", f.maxLen-2)
		}
	}
	first := n.Addr()
	last := lastSubnet(n, sl)
	lo, hi := addSubnets(first, sl, 1), last
	if min != nil && *min != "" {
		if lo, err = f.bound(fMin, *min, n, sl); err != nil {
			return zp, 0, za, za, err
		}
	}
	if max != nil && *max != "" {
		if hi, err = f.bound(fMax, *max, n, sl); err != nil {
			return zp, 0, za, za, err
		}
	}
	if hi.Less(lo) {
		return zp, 0, za, za, cfgErr(fMax, hi.String(), "is below %s %s", fMin, lo)
	}
	return n, sl, lo, hi, nil
}

func (f family) bound(field, s string, n netip.Prefix, sl int) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.BitLen() != f.bits || a.Is4In6() {
		return netip.Addr{}, cfgErr(field, strconv.Quote(s), "is not an %s address", f.familyName())
	}
	if !n.Contains(a) {
		return netip.Addr{}, cfgErr(field, s, "is outside %sNetwork %s", f.name, n)
	}
	if p := netip.PrefixFrom(a, sl).Masked(); p.Addr() != a {
		return netip.Addr{}, cfgErr(field, s, "is not on a /%d subnet boundary (did you mean %s?)", sl, p.Addr())
	}
	return a, nil
}

func (f family) familyName() string {
	if f.bits == 32 {
		return "IPv4"
	}
	return "IPv6"
}

func (f family) example() string {
	if f.bits == 32 {
		return "10.244.0.0/16"
	}
	return "fc00::/48"
}

func parseBackend(data json.RawMessage) (Backend, error) {
	const reason = "overlay speaks only VXLAN on the wire (RFC 7348, the format of flannel's vxlan backend); " +
		"its userspace datapath is a local choice and needs no other backend type. Set Backend.Type to \"vxlan\""
	if len(bytes.TrimSpace(data)) == 0 || string(bytes.TrimSpace(data)) == "null" {
		return Backend{}, cfgErr("Backend.Type", "", "missing, which flannel reads as \"udp\": %s", reason)
	}
	var rb rawBackend
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&rb); err != nil {
		return Backend{}, cfgErr("Backend", string(data), "is not a JSON object: %v", err)
	}
	if rb.Type == nil || *rb.Type == "" {
		return Backend{}, cfgErr("Backend.Type", "", "missing, which flannel reads as \"udp\": %s", reason)
	}
	if *rb.Type != BackendVXLAN {
		return Backend{}, cfgErr("Backend.Type", strconv.Quote(*rb.Type), "is not supported: %s", reason)
	}
	if rb.GBP {
		return Backend{}, cfgErr("Backend.GBP", "true", "is not supported: VXLAN Group Based Policy changes the header that overlay encodes")
	}
	b := Backend{Type: BackendVXLAN, VNI: DefaultVNI, Port: DefaultPort}
	if rb.VNI != nil {
		v, err := rb.VNI.Int64()
		if err != nil || v < 0 || v > maxVNI {
			return Backend{}, cfgErr("Backend.VNI", rb.VNI.String(), "is not an integer in [0, %d]", maxVNI)
		}
		if v != 0 {
			b.VNI = uint32(v)
		}
	}
	if rb.Port != nil {
		v, err := rb.Port.Int64()
		if err != nil || v < 0 || v > 65535 {
			return Backend{}, cfgErr("Backend.Port", rb.Port.String(), "is not a UDP port in [0, 65535]")
		}
		if v != 0 {
			b.Port = uint16(v)
		}
	}
	return b, nil
}

// MarshalJSON encodes c in flannel's config format with every default made
// explicit, so that ParseConfig(MarshalJSON(c)) equals c.
func (c *Config) MarshalJSON() ([]byte, error) {
	type backend struct {
		Type string
		VNI  uint32
		Port uint16
	}
	type out struct {
		EnableIPv4    bool
		Network       string `json:",omitempty"`
		SubnetLen     int    `json:",omitempty"`
		SubnetMin     string `json:",omitempty"`
		SubnetMax     string `json:",omitempty"`
		EnableIPv6    bool   `json:",omitempty"`
		IPv6Network   string `json:",omitempty"`
		IPv6SubnetLen int    `json:",omitempty"`
		IPv6SubnetMin string `json:",omitempty"`
		IPv6SubnetMax string `json:",omitempty"`
		Backend       backend
	}
	o := out{EnableIPv4: c.EnableIPv4, EnableIPv6: c.EnableIPv6, Backend: backend(c.Backend)}
	if c.EnableIPv4 {
		o.Network, o.SubnetLen, o.SubnetMin, o.SubnetMax = c.Network.String(), c.SubnetLen, c.SubnetMin.String(), c.SubnetMax.String()
	}
	if c.EnableIPv6 {
		o.IPv6Network, o.IPv6SubnetLen, o.IPv6SubnetMin, o.IPv6SubnetMax = c.IPv6Network.String(), c.IPv6SubnetLen, c.IPv6SubnetMin.String(), c.IPv6SubnetMax.String()
	}
	return json.Marshal(o)
}

// Contains reports whether sn is an IPv4 subnet this config may hand out:
// SubnetLen long, aligned, within [SubnetMin, SubnetMax].
func (c *Config) Contains(sn netip.Prefix) bool {
	return c.EnableIPv4 && inRange(sn, c.SubnetLen, c.SubnetMin, c.SubnetMax)
}

// ContainsIPv6 is Contains for IPv6 subnets.
func (c *Config) ContainsIPv6(sn netip.Prefix) bool {
	return c.EnableIPv6 && inRange(sn, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax)
}

func inRange(sn netip.Prefix, bits int, lo, hi netip.Addr) bool {
	if !sn.IsValid() || sn.Bits() != bits || sn.Masked() != sn || sn.Addr().BitLen() != lo.BitLen() {
		return false
	}
	a := sn.Addr()
	return !a.Less(lo) && !hi.Less(a)
}
