//go:build !unix

package kubeapi

import "errors"

func lockFile(string) (func(), error) { return nil, errors.ErrUnsupported }
