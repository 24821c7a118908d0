//go:build !linux

package routes

import (
	"errors"
	"fmt"
)

// Link is a link configured by ConfigureLink. Outside Linux it cannot be
// created.
type Link struct{ name string }

// ConfigureLink is only implemented on Linux; elsewhere it returns an error
// wrapping errors.ErrUnsupported.
func ConfigureLink(cfg LinkConfig) (*Link, error) {
	return nil, fmt.Errorf("routes: configure link %s: %w", cfg.Name, errors.ErrUnsupported)
}

// Name returns the link's name.
func (l *Link) Name() string { return l.name }

// Remove does nothing outside Linux.
func (l *Link) Remove() error { return nil }
