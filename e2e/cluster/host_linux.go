package cluster

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Host is a bare namespace on the underlay: an address on the hub bridge
// and nothing else, no lease, no agent. Tests use it as any other machine
// that can reach the nodes' VXLAN port, such as an attacker on the
// underlay. Its fields do not change once AddHost has returned.
type Host struct {
	Name     string // namespace name, <prefix>h<i>
	NS       NS
	Underlay netip.Addr // eth0's address, 172.30.250.(230+i)
}

// maxHosts bounds AddHost, so host addresses stay clear of the nodes'.
const maxHosts = 20

// AddHost creates a host namespace joined to the hub's bridge. Close
// deletes it with the rest of the cluster.
func (c *Cluster) AddHost(ctx context.Context) (*Host, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, net.ErrClosed
	}
	i := len(c.hosts) + 1
	if i > maxHosts {
		c.mu.Unlock()
		return nil, errors.New("too many hosts")
	}
	a := HubIP.As4()
	a[3] = byte(230 + i)
	name := fmt.Sprintf("%sh%d", c.opts.Prefix, i)
	h := &Host{Name: name, NS: NS(name), Underlay: netip.AddrFrom4(a)}
	// Registered before anything is created, so Close finds it.
	c.hosts = append(c.hosts, h)
	c.mu.Unlock()
	if _, err := addNS(ctx, name); err != nil {
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	if err := c.joinHub(h.NS, name, h.Underlay); err != nil {
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	c.log.Info("host ready", "host", name, "underlay", h.Underlay)
	return h, nil
}

// SendUDP sends each payload as one datagram from src (port 0: an
// ephemeral one) to dst, from inside the namespace. Both must be in the
// underlay network, and src an address of the namespace.
func (ns NS) SendUDP(ctx context.Context, src, dst netip.AddrPort, payloads [][]byte) error {
	if !Underlay.Contains(dst.Addr()) || !Underlay.Contains(src.Addr()) {
		return fmt.Errorf("send UDP %v -> %v: outside the underlay %v", src, dst, Underlay)
	}
	pc, err := ns.ListenPacket("udp4", src.String())
	if err != nil {
		return fmt.Errorf("UDP socket in %s: %w", ns, err)
	}
	defer pc.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = pc.SetWriteDeadline(d)
	}
	to := net.UDPAddrFromAddrPort(dst)
	for i, p := range payloads {
		if _, err := pc.WriteTo(p, to); err != nil {
			return fmt.Errorf("send datagram %d to %v: %w", i, dst, err)
		}
	}
	return nil
}

// SendRawUDP sends each payload as one IPv4 UDP datagram from src to dst
// through a raw socket inside the namespace, writing the IP header itself:
// src may be any address at all (a forged source), which an ordinary
// socket would refuse. Both must be in the underlay network. The UDP
// checksum is left zero, which IPv4 allows.
func (ns NS) SendRawUDP(ctx context.Context, src, dst netip.AddrPort, payloads [][]byte) error {
	if !Underlay.Contains(dst.Addr()) || !Underlay.Contains(src.Addr()) || !src.Addr().Is4() || !dst.Addr().Is4() {
		return fmt.Errorf("send raw UDP %v -> %v: not IPv4 inside the underlay %v", src, dst, Underlay)
	}
	var fd int
	err := ns.Do(func() error {
		var err error
		// IPPROTO_RAW sockets send with IP_HDRINCL: the header is ours.
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	})
	if err != nil {
		return fmt.Errorf("raw socket in %s: %w", ns, err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrInet4{Addr: dst.Addr().As4()}
	buf := make([]byte, 0, 65535)
	for i, p := range payloads {
		if err := ctx.Err(); err != nil {
			return err
		}
		buf = appendIPv4UDP(buf[:0], src, dst, p)
		if err := unix.Sendto(fd, buf, 0, to); err != nil {
			return fmt.Errorf("send raw datagram %d %v -> %v: %w", i, src, dst, err)
		}
	}
	return nil
}

// appendIPv4UDP appends an IPv4 header (20 bytes, no options, TTL 64, DF
// clear), a UDP header and payload to b.
func appendIPv4UDP(b []byte, src, dst netip.AddrPort, payload []byte) []byte {
	total := 20 + 8 + len(payload)
	s, d := src.Addr().As4(), dst.Addr().As4()
	ip := [20]byte{0: 0x45, 8: 64, 9: unix.IPPROTO_UDP}
	binary.BigEndian.PutUint16(ip[2:], uint16(total))
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip[:]))
	var udp [8]byte
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	b = append(b, ip[:]...)
	b = append(b, udp[:]...)
	return append(b, payload...)
}

// ipChecksum is the RFC 1071 checksum of an IP header.
func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
