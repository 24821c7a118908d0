// Package retry is the capped exponential backoff with jitter that the
// subnet managers' loops use against etcd and the Kubernetes API.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is a capped exponential delay with jitter: Next doubles the delay
// from Min up to Max. It is not safe for concurrent use; each loop owns one.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the next delay: the current step in [cur/2, cur], so many
// agents retrying at once do not retry in step.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.Min
	} else {
		b.cur = min(2*b.cur, b.Max)
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

// Reset starts the next Next from Min again, after a success.
func (b *Backoff) Reset() { b.cur = 0 }

// Wait sleeps for the next delay; false when ctx ended first.
func (b *Backoff) Wait(ctx context.Context) bool { return Sleep(ctx, b.Next()) }

// Sleep waits d or until ctx is done; false when ctx ended first.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
