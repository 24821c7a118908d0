//go:build !linux

package suite

import (
	"context"
	"errors"
	"fmt"
)

// run needs Linux network namespaces, veth, kernel VXLAN and TUN.
func run(_ context.Context, cfg Config) (*Results, error) {
	if _, err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("the benchmark suite needs Linux network namespaces: %w", errors.ErrUnsupported)
}
