package ps

import (
	"fmt"
	"log/slog"
	"time"
)

// Consistency is when a server applies the workers' pushes and how far
// ahead of the others a worker may read: Sync, Async or BoundedStaleness.
type Consistency struct {
	kind      consistencyKind
	staleness int
}

type consistencyKind uint8

const (
	syncKind consistencyKind = iota + 1
	asyncKind
	sspKind
)

var (
	// Sync is bulk-synchronous training: a server applies the average of
	// the workers' gradients once every worker has pushed the step, and a
	// Pull after a worker's c-th push returns the values after update c.
	// It computes what AllReduce data parallelism computes.
	Sync = Consistency{kind: syncKind}
	// Async applies every push on its own, as it arrives, and a Pull
	// returns the values as they are.
	Async = Consistency{kind: asyncKind}
)

// BoundedStaleness is stale synchronous parallel (SSP): pushes are applied
// as they arrive, as under Async, but a worker whose clock (pushes so far)
// is c blocks in Pull until every other worker has reached clock c − s, so
// no worker reads more than s clocks ahead of the slowest. BoundedStaleness(0)
// lets workers read only once everyone has caught up with them.
func BoundedStaleness(s int) Consistency { return Consistency{kind: sspKind, staleness: s} }

// Staleness is the bound of BoundedStaleness (0 for the others).
func (c Consistency) Staleness() int { return c.staleness }

func (c Consistency) String() string {
	switch c.kind {
	case syncKind:
		return "Sync"
	case asyncKind:
		return "Async"
	case sspKind:
		return fmt.Sprintf("BoundedStaleness(%d)", c.staleness)
	}
	return "Consistency(unset)"
}

// Optimizer is the servers' update rule, applied to each server's slice of
// the flat parameter vector. It must treat every element on its own (the
// new value of element i depends on data[i], grad[i], its own state and
// the step only), so that slicing the model across servers changes no
// number: internal/nn's SGD and Adam are such rules.
type Optimizer interface {
	// StateLen is the number of state values n elements keep (state starts
	// at zero); elements [lo, hi) of a vector own state [StateLen(lo),
	// StateLen(hi)).
	StateLen(n int) int
	// Update applies step number step (1 for the first) to data, given
	// grad and the elements' state.
	Update(step int, data, grad, state []float32) error
}

// DefaultKeepAlive is Options.KeepAlive's default.
const DefaultKeepAlive = time.Second

// DefaultChunkBytes is Options.ChunkBytes' default, BytePS's partition
// size.
const DefaultChunkBytes = 4 << 20

// Options configure a parameter-server job. Every rank passes the same
// options (NewServer and NewWorker check that they do); Optimizer and
// Logger matter on the servers only and are not compared.
type Options struct {
	// Servers is the number of servers: ranks 0 .. Servers−1 of the
	// communicator are servers, the rest workers. At least 1, and at least
	// one worker must remain.
	Servers int
	// Consistency is Sync, Async or BoundedStaleness(s).
	Consistency Consistency
	// Optimizer is the servers' update rule (required on servers).
	Optimizer Optimizer
	// AllowWorkerLoss keeps the servers serving the other workers when a
	// worker is lost, under Async and BoundedStaleness (the lost worker no
	// longer holds back the slowest clock). Without it, or under Sync, a
	// lost worker fails every server and, through them, every worker.
	AllowWorkerLoss bool
	// KeepAlive is how often each side of a server–worker pair writes a
	// small message when it has nothing else to say (zero: DefaultKeepAlive).
	// Each side always waits for the other's next message, so that a lost
	// peer is noticed at once, even by a worker that is computing; the
	// keep-alives keep that wait shorter than the communicator's Timeout
	// and SlowWarning. Keep it well below both.
	KeepAlive time.Duration
	// ChunkBytes cuts each server's slice into chunks of this many bytes
	// (zero: DefaultChunkBytes), each pushed, applied and pulled on its own,
	// so that a step's transfers pipeline: while a worker still pushes
	// chunk k+1, the server applies chunk k and sends it back. Without
	// chunks a Sync step would take a whole push, then a whole pull.
	ChunkBytes int
	// Logger receives warnings (a lost worker under AllowWorkerLoss); nil
	// means slog.Default().
	Logger *slog.Logger
}

func (o Options) keepAlive() time.Duration {
	if o.KeepAlive <= 0 {
		return DefaultKeepAlive
	}
	return o.KeepAlive
}

// chunkLen is ChunkBytes in elements.
func (o Options) chunkLen() int {
	if o.ChunkBytes <= 0 {
		return DefaultChunkBytes / 4
	}
	return max(1, o.ChunkBytes/4)
}

func (o Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}
