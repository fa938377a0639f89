package collective

import (
	"errors"
	"fmt"

	"github.com/ringo-ml/ringo/transport"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrAborted: the communicator failed; every pending and later call
	// returns an error matching it. The cause is wrapped too.
	ErrAborted = errors.New("communicator aborted")
	// ErrClosed: the communicator was closed.
	ErrClosed = errors.New("communicator closed")
	// ErrInvalid: a call's arguments cannot be right (lengths, root, op).
	ErrInvalid = errors.New("invalid argument")
	// ErrMismatch: ranks made different calls at the same point.
	ErrMismatch = transport.ErrMismatch
	// ErrPeerLost: the connection to a rank broke.
	ErrPeerLost = transport.ErrPeerLost
	// ErrAuth: a peer or the rendezvous did not prove it holds the job token.
	ErrAuth = transport.ErrAuth
	// ErrTimeout: a call outlived the communicator's timeout.
	ErrTimeout = transport.ErrTimeout
)

// AbortError is the error of a call on an aborted communicator. It matches
// ErrAborted and unwraps to the cause of the abort.
type AbortError struct {
	Cause error
}

func (e *AbortError) Error() string        { return fmt.Sprintf("%v: %v", ErrAborted, e.Cause) }
func (e *AbortError) Unwrap() error        { return e.Cause }
func (e *AbortError) Is(target error) bool { return target == ErrAborted }
func abortError(cause error) *AbortError   { return &AbortError{Cause: cause} }
func invalidf(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, a...)...)
}
