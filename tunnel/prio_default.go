//go:build !linux

package tunnel

import "errors"

func lowerPriority(int) (func(), error) { return nil, errors.ErrUnsupported }
