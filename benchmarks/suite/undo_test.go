package suite

import (
	"errors"
	"testing"
)

func TestUndoStack(t *testing.T) {
	var order []int
	var s undoStack
	boom := errors.New("boom")
	s.push("one", func() error { order = append(order, 1); return nil })
	s.push("two", func() error { order = append(order, 2); return boom })
	s.push("three", func() error { order = append(order, 3); return nil })
	err := s.run()
	if !errors.Is(err, boom) {
		t.Errorf("err = %v, want boom", err)
	}
	if len(order) != 3 || order[0] != 3 || order[1] != 2 || order[2] != 1 {
		t.Errorf("order %v, want [3 2 1]", order)
	}
	if err := s.run(); err != nil || len(order) != 3 {
		t.Errorf("second run: %v, order %v; want nothing run again", err, order)
	}
}
