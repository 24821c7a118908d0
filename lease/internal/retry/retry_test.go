package retry

import (
	"context"
	"testing"
	"time"
)

func TestBackoffGrowsToMaxWithJitterAndResets(t *testing.T) {
	b := &Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	steps := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, step := range steps {
		step *= time.Millisecond
		d := b.Next()
		if d < step/2 || d > step {
			t.Fatalf("delay %d = %v, want in [%v, %v]", i, d, step/2, step)
		}
	}
	b.Reset()
	if d := b.Next(); d < 50*time.Millisecond || d > 100*time.Millisecond {
		t.Fatalf("after Reset: %v, want in [50ms, 100ms]", d)
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep without cancel returned false")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep on a done context returned true")
	}
	if time.Since(start) > time.Minute {
		t.Fatal("Sleep on a done context waited")
	}
	b := &Backoff{Min: time.Hour, Max: time.Hour}
	if b.Wait(ctx) {
		t.Fatal("Wait on a done context returned true")
	}
}
