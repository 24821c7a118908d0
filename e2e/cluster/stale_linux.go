package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// CleanupStale removes what a killed run with the same prefix left behind:
// it kills every process still inside a namespace whose name starts with
// prefix (only the harness starts processes there) and deletes those
// namespaces. It returns the names it deleted. Never call it while another
// live cluster uses the same prefix.
func CleanupStale(ctx context.Context, prefix string) ([]string, error) {
	if err := validPrefix(prefix); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var deleted []string
	var errs []error
	// Pods and nodes first, the hub (which holds etcd) last.
	var hubs []string
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		if strings.HasSuffix(name, "hub") {
			hubs = append(hubs, name)
			continue
		}
		if err := killAndDelete(ctx, NS(name)); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, name)
	}
	for _, name := range hubs {
		if err := killAndDelete(ctx, NS(name)); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, name)
	}
	return deleted, errors.Join(errs...)
}

// killPID kills one process the harness started.
func killPID(pid int) {
	if pid > 1 && pid != os.Getpid() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}
