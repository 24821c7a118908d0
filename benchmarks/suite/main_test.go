package suite

import (
	"fmt"
	"os"
	"testing"
)

// TestMain lets the test binary serve the platform probe's Go echo, as
// overlay-bench does: the suite tests set Config.EchoCommand to it.
func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == EchoArg {
		fmt.Fprintln(os.Stderr, ServeEcho(os.Args[2]))
		os.Exit(1)
	}
	os.Exit(m.Run())
}
