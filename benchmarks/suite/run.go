package suite

import (
	"context"
	"errors"
)

// Errors Run returns besides configuration and setup errors.
var (
	// ErrPathFailed means at least one path could not be set up or
	// measured. Run still returns the results of everything else; the
	// caller should write them and exit non-zero.
	ErrPathFailed = errors.New("a benchmark path failed")
	// ErrNotRoot means the suite needs root (network namespaces, veth,
	// VXLAN and TUN devices); rerun it with sudo.
	ErrNotRoot = errors.New("the benchmark suite needs root")
	// ErrBusy means another suite run is in progress on this machine; wait
	// for it to finish.
	ErrBusy = errors.New("another benchmark run is in progress")
)

// Run measures every configured path, Config.Repetitions times, with the
// paths interleaved within each repetition, and returns the results with
// their summary, ratios and target verdicts filled in. It does not write
// files; see [WriteFiles].
//
// Everything Run creates (namespaces, devices, processes, temporary files)
// is removed before it returns, also when ctx is cancelled: a caller
// cancels ctx on SIGINT/SIGTERM and gets ctx's error back once the
// cleanup is done. A path that fails is reported in its
// [PathResult.Errors] and makes Run return the results together with an
// error wrapping [ErrPathFailed]; a missed target is never an error.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	return run(ctx, cfg)
}
