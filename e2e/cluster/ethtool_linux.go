package cluster

// A minimal SIOCETHTOOL client: iproute2 and netlink cannot change
// offloads, and the harness must not need the ethtool binary.

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ethtool commands (linux/ethtool.h).
const (
	ethtoolSTSO = 0x1f // set TCP segmentation offload
	ethtoolSGSO = 0x24 // set generic segmentation offload
)

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq with its ifr_data member.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

// setSegmentationOffload turns a link's TSO and GSO on or off, as
// `ethtool -K <ifname> tso off gso off` does, inside the namespace.
func (ns NS) setSegmentationOffload(ifname string, on bool) error {
	for _, cmd := range []uint32{ethtoolSTSO, ethtoolSGSO} {
		if err := ns.ethtoolSet(ifname, cmd, on); err != nil {
			return err
		}
	}
	return nil
}

// ethtoolSet runs one ethtool "set value" command on a link in the
// namespace.
func (ns NS) ethtoolSet(ifname string, cmd uint32, on bool) error {
	return ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		v := ethtoolValue{cmd: cmd}
		if on {
			v.data = 1
		}
		var req ifreqData
		copy(req.name[:unix.IFNAMSIZ-1], ifname)
		req.data = unsafe.Pointer(&v)
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&req))); errno != 0 {
			return fmt.Errorf("ethtool -K %s (cmd %#x) %v: %w", ifname, cmd, on, errno)
		}
		return nil
	})
}
