package parallel

import (
	"context"
	"errors"
	"log/slog"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/collective"
)

// Defaults of DataParallelOptions, PyTorch DDP's.
const (
	DefaultBucketBytes      = 25 << 20
	DefaultFirstBucketBytes = 1 << 20
)

// DataParallelOptions tune a DataParallel. Every rank must pass the same
// options: NewDataParallel checks that they do.
type DataParallelOptions struct {
	// BucketBytes caps a bucket's gradient bytes (zero: DefaultBucketBytes).
	// A parameter bigger than that has a bucket of its own.
	BucketBytes int
	// FirstBucketBytes caps the first bucket, the last parameters' (zero:
	// DefaultFirstBucketBytes): small, so that its reduction starts early.
	FirstBucketBytes int
	// Compression encodes the gradient buckets' AllReduce traffic: "bf16"
	// or "fp16" (lossy, accumulated in float32, as DDP's compression hooks
	// do), "s2" or "zstd" (lossless), "none"; "" keeps the communicator's
	// own Config.Compression. See collective.Config.Compression for what
	// each costs and how much it rounds.
	Compression string
	// Logger receives the debug report of the first step (which parameters
	// were never marked ready); nil means the communicator's logger, which
	// logs at debug level under RINGO_DEBUG.
	Logger *slog.Logger
}

// DataParallel averages the gradients of a model replicated on every rank
// of a communicator. See the package documentation.
//
// Ready may be called from several goroutines at once; the other methods
// are called by one goroutine, between steps (Sync ends a step).
type DataParallel struct {
	comm   *collective.Comm
	params []*Param
}

// NewDataParallel wraps params, the model's parameters in forward order
// (the same names and lengths, in the same order, on every rank), for data
// parallel training over comm. It is a collective call on comm: every rank
// calls it.
//
// It copies rank 0's p.Data to every rank, and re-points each p.Grad into a
// flat bucket buffer keeping its values (a nil p.Grad becomes zeros). If the
// ranks' parameter lists or options differ, every rank returns an error
// (matching collective.ErrMismatch) naming the first parameter that differs;
// an invalid list on any rank (a nil Param, len(Grad) != len(Data), a name
// used twice) fails every rank too, the rank at fault with an error matching
// collective.ErrInvalid that says what is wrong.
//
// Close the DataParallel when done with it; it does not close comm.
func NewDataParallel(ctx context.Context, comm *collective.Comm, params []*Param, opts DataParallelOptions) (*DataParallel, error) {
	return nil, errNotYet
}

// Ready says that p.Grad is final for this step: once every parameter of
// p's bucket (and of every bucket before it) is ready, the bucket's
// AllReduce starts in the background. p.Grad must not be written again
// until Sync returns. Ready is optional, and safe to call from several
// goroutines at once.
//
// Ready on a parameter that is not one of this DataParallel's, or twice for
// one parameter in a step, is a bug in the caller: the next Sync reports it
// (and, as the ranks can no longer agree on the step, aborts the
// communicator so that every rank stops).
func (dp *DataParallel) Ready(p *Param) {}

// Sync ends a step: it starts the reduction of every bucket not started yet
// (a parameter never marked ready is reduced with its current gradient),
// waits for all of them, and leaves in every p.Grad the average of p.Grad
// over the ranks. With synchronisation off (SetSync), it only adds the
// step's gradients to the local sum and communicates nothing.
//
// If ctx ends before the reductions finish, Sync aborts the communicator
// (the ranks can no longer agree on this step) and returns ctx's cause. Any
// error leaves the communicator aborted, on every rank.
func (dp *DataParallel) Sync(ctx context.Context) error { return errNotYet }

// SetSync turns gradient synchronisation off (false) or back on (true),
// from the next step on, as PyTorch DDP's no_sync: see the package
// documentation for what accumulating micro-batches computes. It must be
// called between steps (before the step's first Ready).
func (dp *DataParallel) SetSync(on bool) {}

// NoSync runs fn with synchronisation off, then turns it back on: the form
// of PyTorch's `with ddp.no_sync():`. Call Sync inside fn for each
// micro-batch; the Sync after NoSync returns reduces the sum.
func (dp *DataParallel) NoSync(fn func() error) error {
	dp.SetSync(false)
	defer dp.SetSync(true)
	return fn()
}

// Params returns the parameters, in the order given to NewDataParallel.
func (dp *DataParallel) Params() []*Param { return dp.params }

// Comm returns the communicator.
func (dp *DataParallel) Comm() *collective.Comm { return dp.comm }

// BucketInfo describes one bucket.
type BucketInfo struct {
	Params   []string // names, in the order their gradients lie in the bucket
	Elements int      // float32 gradient values
}

// Buckets describes the buckets, in the order they are reduced.
func (dp *DataParallel) Buckets() []BucketInfo { return nil }

// Close ends the DataParallel's background goroutines, after waiting for a
// reduction still in flight. It does not close the communicator. Close is
// idempotent and returns nil.
func (dp *DataParallel) Close() error { return nil }

// SaveCheckpoint writes a checkpoint of the model to path: ck's metadata and
// tensors (e.g. the optimizer's state, named) plus every parameter's Data,
// named by its Name (ck is not changed). It is a collective call: rank 0
// writes the file (atomically: see checkpoint.Save), and every rank returns
// rank 0's error, if any. Call it between steps.
func (dp *DataParallel) SaveCheckpoint(ctx context.Context, path string, ck *checkpoint.Checkpoint) error {
	return errNotYet
}

// LoadCheckpoint reads the checkpoint at path on rank 0 (only rank 0 needs
// the file), sends it to every rank, copies every parameter's tensor into
// p.Data, and returns the whole checkpoint (metadata, optimizer tensors) for
// the caller to restore the rest. It is a collective call. Every rank
// returns the same error: one matching fs.ErrNotExist when there is no file
// (start from scratch), checkpoint.ErrCorrupt for a damaged one, and
// checkpoint.ErrInvalid when a parameter is missing or has another length.
func (dp *DataParallel) LoadCheckpoint(ctx context.Context, path string) (*checkpoint.Checkpoint, error) {
	return nil, errNotYet
}

var errNotYet = errors.New("parallel: not implemented yet")
