package suite

import (
	"fmt"
	"net"
)

// EchoArg is the argument that makes a program built with this package
// serve the platform probe's UDP echo (see Config.EchoCommand): a program
// that finds os.Args[1] == EchoArg calls ServeEcho(os.Args[2]).
const EchoArg = "probe-echo"

// ServeEcho answers every UDP datagram sent to addr with the same bytes,
// one at a time through the Go runtime's netpoller, as the agent's pumps
// wait for packets. It returns only on a socket error; the suite ends it
// with SIGTERM.
func ServeEcho(addr string) error {
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("probe echo: %w", err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("probe echo: %w", err)
		}
		if _, err := c.WriteTo(buf[:n], from); err != nil {
			return fmt.Errorf("probe echo: %w", err)
		}
	}
}
