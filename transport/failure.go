package transport

import (
	"errors"
	"sync"
)

// Failure is the shared fate of one communicator's links: the first error
// reported wins, every waiter on Done wakes, and onFail runs once.
type Failure struct {
	once   sync.Once
	done   chan struct{}
	err    error
	onFail func(error)
}

// NewFailure returns a Failure that calls onFail (if not nil) with the first
// error, after Done is closed.
func NewFailure(onFail func(error)) *Failure {
	return &Failure{done: make(chan struct{}), onFail: onFail}
}

// Fail records err if no error was recorded yet and reports whether it did.
func (f *Failure) Fail(err error) bool {
	if err == nil {
		err = errors.New("failed without a reason")
	}
	first := false
	f.once.Do(func() {
		first = true
		f.err = err
		close(f.done)
		if f.onFail != nil {
			f.onFail(err)
		}
	})
	return first
}

// Done is closed once an error was recorded.
func (f *Failure) Done() <-chan struct{} { return f.done }

// Err returns the recorded error, or nil.
func (f *Failure) Err() error {
	select {
	case <-f.done:
		return f.err
	default:
		return nil
	}
}
