//go:build !linux

package tunnel

import (
	"errors"
	"fmt"
)

// ListenUDP is only implemented on Linux; elsewhere it returns an error
// wrapping errors.ErrUnsupported.
func ListenUDP(opts UDPOptions) (Conn, error) {
	return nil, fmt.Errorf("tunnel: listen UDP %v: %w", opts.Addr, errors.ErrUnsupported)
}
