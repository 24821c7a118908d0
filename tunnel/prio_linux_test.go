package tunnel

import (
	"os"
	"strings"
	"testing"
)

// TestLowerPriority checks that the thread lowerPriority leaves the
// goroutine on runs at the nice value asked for, read back from
// /proc/thread-self/stat, and that other threads keep theirs.
func TestLowerPriority(t *testing.T) {
	done := make(chan string)
	go func() {
		if _, err := lowerPriority(outPumpNice); err != nil {
			done <- "error: " + err.Error()
			return
		}
		done <- threadNice(t)
	}()
	if got := <-done; got != "5" {
		t.Errorf("the out pump's thread runs at nice %s, want 5", got)
	}
	if got := threadNice(t); got != "0" {
		t.Errorf("another thread runs at nice %s, want 0", got)
	}
}

// threadNice is field 19 of /proc/thread-self/stat, after the command name.
func threadNice(t *testing.T) string {
	b, err := os.ReadFile("/proc/thread-self/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return f[16] // fields 3.. start at index 0: nice is field 19
}
