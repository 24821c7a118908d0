//go:build !linux

package tunnel

import (
	"errors"
	"fmt"
)

// OpenTUN is only implemented on Linux; elsewhere it returns an error
// wrapping errors.ErrUnsupported.
func OpenTUN(opts TUNOptions) (Device, Mode, error) {
	return nil, 0, fmt.Errorf("tunnel: open TUN %q: %w", opts.Name, errors.ErrUnsupported)
}
