package transport

import (
	"errors"
	"fmt"
	"net"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrProtocol: the peer sent bytes that are not a valid frame or handshake.
	ErrProtocol = errors.New("protocol error")
	// ErrAuth: a handshake failed because one side does not hold the job token.
	ErrAuth = errors.New("authentication failed")
	// ErrOtherJob: the two sides of a handshake belong to different jobs
	// (their job ids differ), typically two jobs given the same address. It
	// matches ErrProtocol too.
	ErrOtherJob = fmt.Errorf("%w: another job", ErrProtocol)
	// ErrPeerLost: the connection to a peer broke (EOF, reset, write error).
	ErrPeerLost = errors.New("peer lost")
	// ErrPeerClosed: the peer closed its communicator normally.
	ErrPeerClosed = errors.New("peer closed the communicator")
	// ErrMismatch: a frame's header differs from what the receiver expected.
	ErrMismatch = errors.New("mismatched operation")
	// ErrRemoteAbort: the peer reported that the communicator failed.
	ErrRemoteAbort = errors.New("aborted by peer")
	// ErrClosed: this side closed the listener, mesh or stream the call
	// used. It is net.ErrClosed, so that the errors of the sockets beneath
	// match it too.
	ErrClosed = net.ErrClosed
)

// MismatchError reports a data frame whose header differs from the receive
// that was posted for it. No payload byte was read into the posted buffer.
type MismatchError struct {
	Peer int    // rank the frame came from
	Got  Header // what the peer sent
	Want Header // what this rank expected
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("%v: from rank %d got %+v, expected %+v", ErrMismatch, e.Peer, e.Got, e.Want)
}

func (e *MismatchError) Unwrap() error { return ErrMismatch }

// RemoteAbortError carries the reason a peer gave in its abort frame. Code is
// an error class chosen by the layer above (the first payload byte), so that
// the class of a failure survives the trip to every rank.
type RemoteAbortError struct {
	Peer   int
	Code   byte
	Reason string
}

func (e *RemoteAbortError) Error() string {
	return fmt.Sprintf("%s (reported by rank %d)", e.Reason, e.Peer)
}

func (e *RemoteAbortError) Unwrap() error { return ErrRemoteAbort }
