package kubeapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// ErrUnavailable means the kube-apiserver-test binary cannot be built here:
// no go command, or its modules cannot be downloaded. Tests may skip on it;
// any other Build error is a real failure.
var ErrUnavailable = errors.New("kube-apiserver-test cannot be built here")

// BinEnv names an environment variable that, when set, is the
// kube-apiserver-test binary to use instead of building one.
const BinEnv = "KUBE_APISERVER_TEST_BIN"

// SourceDir is the e2e/kube module's directory in this source tree.
func SourceDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("kubeapi: cannot locate the source tree")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "kube")
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("kubeapi: the e2e/kube module is not at %s (a binary built with -trimpath? set %s): %w", dir, BinEnv, err)
	}
	return filepath.Clean(dir), nil
}

// DefaultCacheDir is where Build keeps binaries: the user cache directory's
// overlay/e2e-kube (~/.cache/overlay/e2e-kube).
func DefaultCacheDir() (string, error) {
	d, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "overlay", "e2e-kube"), nil
}

// Build returns the path of a kube-apiserver-test binary built from the
// e2e/kube module of this source tree: $KUBE_APISERVER_TEST_BIN when set,
// else cacheDir/<key>/kube-apiserver-test, built there first when missing.
// The key hashes the module's go.mod, go.sum and Go sources with the Go
// version, so a warm call costs a hash and a stat; a cold one a full
// kube-apiserver build (minutes). cacheDir "" means DefaultCacheDir.
// Concurrent callers (test packages run in parallel) build once: the build
// holds a lock file in cacheDir. Errors wrap ErrUnavailable when the go
// command or the module downloads are missing.
func Build(ctx context.Context, cacheDir string) (string, error) {
	if b := os.Getenv(BinEnv); b != "" {
		return filepath.Abs(b)
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("%w: no go command: %v", ErrUnavailable, err)
	}
	src, err := SourceDir()
	if err != nil {
		return "", err
	}
	if cacheDir == "" {
		if cacheDir, err = DefaultCacheDir(); err != nil {
			return "", fmt.Errorf("kubeapi: cache dir: %w", err)
		}
	}
	key, err := sourceKey(ctx, gobin, src)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(cacheDir, key, "kube-apiserver-test")
	if st, err := os.Stat(bin); err == nil && st.Mode().IsRegular() {
		return bin, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("kubeapi: %w", err)
	}
	unlock, err := lockFile(filepath.Join(cacheDir, "build.lock"))
	if err != nil {
		return "", fmt.Errorf("kubeapi: lock: %w", err)
	}
	defer unlock()
	if _, err := os.Stat(bin); err == nil { // built while we waited
		return bin, nil
	}

	env := append(os.Environ(), "GOFLAGS=-buildvcs=false", "GOWORK=off")
	run := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, gobin, args...)
		cmd.Dir, cmd.Env = src, env
		return cmd.CombinedOutput()
	}
	// Downloads first, so a machine without the module proxy is told apart
	// from a build that fails.
	if out, err := run("mod", "download"); err != nil {
		return "", fmt.Errorf("%w: go mod download in %s: %v\n%s", ErrUnavailable, src, err, out)
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", fmt.Errorf("kubeapi: %w", err)
	}
	tmp := bin + ".tmp"
	start := time.Now()
	// No -trimpath: the compiled packages then stay shared with go vet and
	// staticcheck runs over the module; -s -w only shrink the link.
	if out, err := run("build", "-ldflags=-s -w", "-o", tmp, "."); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("kubeapi: go build in %s: %w\n%s", src, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("kubeapi: %w", err)
	}
	fmt.Fprintf(os.Stderr, "kubeapi: built %s in %v\n", bin, time.Since(start).Round(time.Second))
	removeStale(cacheDir, key)
	return bin, nil
}

// sourceKey hashes the Go version and every go.mod, go.sum and .go file of
// the module at src.
func sourceKey(ctx context.Context, gobin, src string) (string, error) {
	out, err := exec.CommandContext(ctx, gobin, "env", "GOVERSION", "GOOS", "GOARCH").Output()
	if err != nil {
		return "", fmt.Errorf("%w: go env: %v", ErrUnavailable, err)
	}
	h := sha256.New()
	h.Write(out)
	var files []string
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n := d.Name()
		if d.Type().IsRegular() && (n == "go.mod" || n == "go.sum" || strings.HasSuffix(n, ".go")) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("kubeapi: hash sources: %w", err)
	}
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("kubeapi: hash sources: %w", err)
		}
		rel, _ := filepath.Rel(src, f)
		fmt.Fprintf(h, "%s %d\n", rel, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// removeStale deletes the binaries of other keys (each is ~100 MB).
func removeStale(cacheDir, keep string) {
	ents, err := os.ReadDir(cacheDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.IsDir() && e.Name() != keep && len(e.Name()) == len(keep) {
			os.RemoveAll(filepath.Join(cacheDir, e.Name()))
		}
	}
}
