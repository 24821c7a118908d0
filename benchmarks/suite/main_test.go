package suite

import (
	"fmt"
	"os"
	"testing"

	"overlay/benchmarks/floor"
)

// TestMain lets the test binary serve the platform probe's Go echo, as
// overlay-bench does: the suite tests set Config.EchoCommand to it. It
// runs the floor relay too (Config.FloorCommand).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == floor.Arg {
		os.Exit(floor.Command(os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) == 3 && os.Args[1] == EchoArg {
		fmt.Fprintln(os.Stderr, ServeEcho(os.Args[2]))
		os.Exit(1)
	}
	os.Exit(m.Run())
}
