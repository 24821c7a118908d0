package lease

import (
	"crypto/sha256"
	"net"
	"net/netip"
	"os"
	"strings"
)

// machineIDPaths are where systemd and D-Bus keep the machine ID.
var machineIDPaths = []string{"/etc/machine-id", "/var/lib/dbus/machine-id"}

// MachineID returns the host's machine ID (/etc/machine-id, else D-Bus's
// copy), or "" when neither is readable.
func MachineID() string {
	for _, p := range machineIDPaths {
		if b, err := os.ReadFile(p); err == nil {
			if id := strings.TrimSpace(string(b)); id != "" {
				return id
			}
		}
	}
	return ""
}

// VtepMAC derives the node's VTEP MAC from a stable node identity: the
// machine ID (may be "") and the node's public IP. The result is a locally
// administered unicast MAC (first octet x2, x6, xA or xE).
//
// Why derived rather than random-and-persisted: flannel keeps its VTEP MAC in
// the kernel device, which survives an agent restart but not a reboot, and
// peers must re-learn it from the lease either way. Deriving it gives the
// same MAC across restarts and reboots with no state file to lose (subnet.env
// lives in /run, a tmpfs), so peers keep valid neighbour and FDB entries
// while we restart. The public IP is part of the input so that several
// nodes on one machine (network namespaces share /etc/machine-id) still get
// distinct MACs; the machine ID keeps nodes that share an address behind
// different NATs apart.
func VtepMAC(machineID string, publicIP netip.Addr) net.HardwareAddr {
	h := sha256.New()
	h.Write([]byte("overlay vtep mac v1\x00"))
	h.Write([]byte(machineID))
	h.Write([]byte{0})
	ip := publicIP.Unmap().AsSlice()
	h.Write(ip)
	sum := h.Sum(nil)
	mac := make(net.HardwareAddr, 6)
	copy(mac, sum)
	mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered (IEEE 802 U/L bit)
	return mac
}
