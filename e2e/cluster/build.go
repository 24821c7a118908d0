package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildOverlay returns an overlay binary for tests: the one OVERLAY_BIN
// names, or else one built from this source tree (overlay/cmd/overlay) into
// dir, which the caller owns and removes. Tests of the harness, the agent
// and the benchmark suite all use it, so they all run the agent of the same
// commit, and every cluster runs its etcd as `overlay etcd` with no etcd
// installed on the machine.
func BuildOverlay(dir string) (string, error) {
	if b := os.Getenv("OVERLAY_BIN"); b != "" {
		return filepath.Abs(b)
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("no go command to build the overlay binary (or set OVERLAY_BIN): %w", err)
	}
	bin := filepath.Join(dir, "overlay")
	cmd := exec.Command(gobin, "build", "-o", bin, "overlay/cmd/overlay")
	cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build overlay/cmd/overlay: %w\n%s", err, out)
	}
	return bin, nil
}
