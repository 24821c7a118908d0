package cluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Capture records the IPv4 packets that cross a pod's eth0, as tcpdump in
// the pod would see them, keeping those its match function accepts. Create
// one with Pod.Capture and end it with Stop.
type Capture struct {
	f     *os.File
	match func(pkt []byte) bool
	done  chan struct{}

	mu   sync.Mutex // guards pkts and err
	pkts [][]byte
	err  error
}

// maxCaptured bounds what a Capture keeps, so a match function that
// accepts too much cannot exhaust memory.
const maxCaptured = 100000

// Capture starts recording the IPv4 packets on the pod's eth0, in both
// directions, through an AF_PACKET socket in the pod's namespace. match
// sees each packet (from its IP header on; it must not keep the slice) and
// says whether to keep a copy.
func (p *Pod) Capture(match func(pkt []byte) bool) (*Capture, error) {
	var fd int
	err := p.NS.Do(func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		// SOCK_DGRAM: packets come without their link-layer header.
		proto := int(htons(unix.ETH_P_IP))
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture in %s: %w", p.Name, err)
	}
	// A non-blocking descriptor joins the runtime poller, so Close
	// unblocks the reader.
	c := &Capture{f: os.NewFile(uintptr(fd), p.Name+" capture"), match: match, done: make(chan struct{})}
	go c.read()
	return c, nil
}

func (c *Capture) read() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		n, err := c.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				c.mu.Lock()
				c.err = err
				c.mu.Unlock()
			}
			return
		}
		if !c.match(buf[:n]) {
			continue
		}
		c.mu.Lock()
		if len(c.pkts) < maxCaptured {
			c.pkts = append(c.pkts, append([]byte(nil), buf[:n]...))
		}
		c.mu.Unlock()
	}
}

// Packets returns the packets kept so far.
func (c *Capture) Packets() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.pkts...)
}

// Stop ends the capture and returns the packets kept, and the error that
// ended it early, if any.
func (c *Capture) Stop() ([][]byte, error) {
	c.f.Close()
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pkts, c.err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
