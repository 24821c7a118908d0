package kubeapi

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestSourceKey: the cache key changes with any go.mod, go.sum or .go
// file, and not with other files.
func TestSourceKey(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	dir := t.TempDir()
	write := func(name, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	key := func() string {
		t.Helper()
		k, err := sourceKey(context.Background(), gobin, dir)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write("go.mod", "module x\n")
	write("main.go", "package main\n")
	k0 := key()
	if key() != k0 {
		t.Fatal("key is not stable")
	}
	write("README", "notes")
	if key() != k0 {
		t.Fatal("a non-Go file changed the key")
	}
	seen := map[string]string{k0: "initial"}
	for _, step := range []struct{ name, content string }{
		{"main.go", "package main // changed\n"},
		{"go.sum", "x v1 h1:abc=\n"},
		{"sub/b.go", "package sub\n"},
		{"go.mod", "module x\n\ngo 1.26\n"},
	} {
		write(step.name, step.content)
		k := key()
		if prev, ok := seen[k]; ok {
			t.Fatalf("changing %s left the key as after %s", step.name, prev)
		}
		seen[k] = step.name
	}
}
