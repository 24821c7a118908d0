package suite

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
)

// undoStack records how to undo everything the suite created, like
// testing.T.Cleanup: actions run last-in first-out. The zero value is an
// empty stack; it is safe for concurrent use, and run may be called any
// number of times (each action runs once).
type undoStack struct {
	log *slog.Logger // nil: no logging

	mu  sync.Mutex // guards fns
	fns []undoAction
}

type undoAction struct {
	what string
	fn   func() error
}

// push records fn, described by what ("delete namespace ovl-bn-a").
func (s *undoStack) push(what string, fn func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fns = append(s.fns, undoAction{what, fn})
}

// run undoes everything pushed so far, newest first, and returns the joined
// errors. Every action runs even when an earlier one fails.
func (s *undoStack) run() error {
	s.mu.Lock()
	fns := s.fns
	s.fns = nil
	s.mu.Unlock()
	var errs []error
	for i := len(fns) - 1; i >= 0; i-- {
		a := fns[i]
		if s.log != nil {
			s.log.Debug("cleanup", "action", a.what)
		}
		if err := a.fn(); err != nil {
			errs = append(errs, fmt.Errorf("cleanup: %s: %w", a.what, err))
		}
	}
	return errors.Join(errs...)
}
