package tunnel

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// lowerPriority locks the calling goroutine to its OS thread and raises
// sets that thread's nice value to nice (the agent runs at 0), so the scheduler favours the other
// threads (the in pump, the applications) when the cores are busy. The
// caller must call the returned function when done.
func lowerPriority(nice int) (undo func(), err error) {
	runtime.LockOSThread()
	if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), nice); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	// The thread keeps its nice value: leave it locked, so the runtime
	// discards it with the goroutine rather than reuse it elsewhere.
	return func() {}, nil
}
