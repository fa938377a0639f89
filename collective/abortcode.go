package collective

import (
	"context"
	"errors"

	"github.com/ringo-ml/ringo/transport"
)

// The class of an abort travels with its reason, so that every rank's error
// matches the same sentinel as the error of the rank that saw the problem.
var abortClasses = []error{
	nil, // 0: unclassified
	ErrMismatch,
	ErrPeerLost,
	ErrTimeout,
	ErrInvalid,
	context.Canceled,
	context.DeadlineExceeded,
	ErrClosed,
	transport.ErrPeerClosed,
	transport.ErrProtocol,
}

func abortCode(err error) byte {
	for i, class := range abortClasses {
		if class != nil && errors.Is(err, class) {
			return byte(i)
		}
	}
	return 0
}

// remoteAbort is a failure another rank reported; it matches the class that
// rank gave it.
type remoteAbort struct {
	*transport.RemoteAbortError
}

func (e remoteAbort) Unwrap() error { return e.RemoteAbortError }

func (e remoteAbort) Is(target error) bool {
	c := int(e.Code)
	return c > 0 && c < len(abortClasses) && abortClasses[c] == target
}
