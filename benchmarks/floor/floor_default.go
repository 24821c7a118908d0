//go:build !linux

package floor

import (
	"context"
	"errors"
)

// Run needs Linux (an offloading TUN, UDP GSO/GRO).
func Run(ctx context.Context, cfg Config, ready func()) error {
	return errors.New("floor: the floor relay needs Linux")
}
