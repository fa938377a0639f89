package ps

import (
	"errors"
	"fmt"
)

// ErrClosed is returned by calls on a closed Worker or Server.
var ErrClosed = errors.New("ps: closed")

// ErrAllWorkersLost ends Serve when every worker was lost (under
// AllowWorkerLoss) and none finished.
var ErrAllWorkersLost = errors.New("ps: every worker was lost")

// ServerError is how a worker fails when a server is lost or fails: it
// names the server. Err is the cause as the worker saw it (matching
// collective.ErrPeerLost when the server's process or link is gone, and
// carrying the server's own reason when the server failed, e.g. because a
// worker was lost under Sync). Err comes from the server–worker pair's own
// communicator, in which the server is rank 0 and the worker rank 1.
type ServerError struct {
	Server int // index among the servers
	Rank   int // rank in the job's communicator
	Err    error
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("ps: server %d (rank %d) failed or was lost: %v", e.Server, e.Rank, e.Err)
}

func (e *ServerError) Unwrap() error { return e.Err }

// WorkerError is how a server fails when a worker is lost (its process or
// link is gone, or it failed and aborted) or breaks the protocol: it names
// the worker and the clock it had reached. Err comes from the pair's own
// communicator, in which the server is rank 0 and the worker rank 1.
type WorkerError struct {
	Worker int // index among the workers
	Rank   int // rank in the job's communicator
	Clock  int // pushes the server had received from it
	Err    error
}

func (e *WorkerError) Error() string {
	return fmt.Sprintf("ps: worker %d (rank %d), at clock %d: %v", e.Worker, e.Rank, e.Clock, e.Err)
}

func (e *WorkerError) Unwrap() error { return e.Err }
