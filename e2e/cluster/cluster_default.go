//go:build !linux

package cluster

import (
	"context"
	"errors"
	"io"
)

// Demo needs Linux network namespaces.
func Demo(ctx context.Context, w io.Writer, opts DemoOptions) error {
	return errors.ErrUnsupported
}

// CleanupStale needs Linux network namespaces.
func CleanupStale(ctx context.Context, prefix string) ([]string, error) {
	return nil, errors.ErrUnsupported
}
