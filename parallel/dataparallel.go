package parallel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

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
// are called by one goroutine, between steps (Sync ends a step), and every
// Ready of a step happens before its Sync.
type DataParallel struct {
	comm    *collective.Comm
	params  []*Param
	index   map[*Param]int // position in params
	log     *slog.Logger
	buckets []*bucket
	// Per parameter: its bucket, and its gradient's view in that bucket.
	bucketOf []int
	views    [][]float32
	// marked is, per parameter, the step it was last marked ready in.
	marked []atomic.Uint64
	step   atomic.Uint64 // the step in progress, from 1
	// readies counts this step's Ready calls (SetSync checks for none).
	readies atomic.Int64
	syncOn  atomic.Bool
	// summed: the buckets' acc hold the sum of earlier micro-batches'
	// gradients (SetSync(false)), to be added before the next reduction.
	summed bool

	mu       sync.Mutex
	launched int   // buckets started this step: always a prefix
	misuse   error // the first error made by a Ready call this step

	logged bool  // the first synchronised step has been reported
	failed error // the error that ended this DataParallel
	closed bool
}

// bucket is one flat gradient buffer and its AllReduce.
type bucket struct {
	params  []int     // indices of its parameters, in buffer order
	grad    []float32 // the parameters' gradients, back to back
	acc     []float32 // the local sum while synchronisation is off; nil until needed
	reducer *collective.AllReducer[float32]
	// pending counts its parameters not marked ready this step.
	pending atomic.Int32
	// prepared (guarded by mu): acc has been added; it may start.
	prepared bool
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
	if comm == nil {
		return nil, fmt.Errorf("parallel: NewDataParallel: %w: nil communicator", collective.ErrInvalid)
	}
	opts, local := checkLocal(comm, params, opts)
	if err := agree(ctx, comm, params, opts, local); err != nil {
		return nil, fmt.Errorf("parallel: NewDataParallel on rank %d: %w", comm.Rank(), err)
	}
	dp := &DataParallel{
		comm:     comm,
		params:   slices.Clone(params),
		index:    make(map[*Param]int, len(params)),
		log:      opts.Logger,
		bucketOf: make([]int, len(params)),
		views:    make([][]float32, len(params)),
		marked:   make([]atomic.Uint64, len(params)),
	}
	if dp.log == nil {
		dp.log = comm.Logger()
	}
	for i, p := range params {
		dp.index[p] = i
	}
	dp.step.Store(1)
	dp.syncOn.Store(true)
	for b, idx := range assignBuckets(params, opts.FirstBucketBytes, opts.BucketBytes) {
		bk := &bucket{params: idx}
		n := 0
		for _, i := range idx {
			n += len(params[i].Data)
		}
		bk.grad = make([]float32, n)
		off := 0
		for _, i := range idx {
			m := len(params[i].Data)
			dp.views[i] = bk.grad[off : off+m : off+m]
			dp.bucketOf[i] = b
			off += m
		}
		bk.pending.Store(int32(len(idx)))
		dp.buckets = append(dp.buckets, bk)
	}
	if err := dp.broadcastData(ctx); err != nil {
		return nil, fmt.Errorf("parallel: NewDataParallel on rank %d: copying rank 0's parameters: %w", comm.Rank(), err)
	}
	for i, p := range params {
		copy(dp.views[i], p.Grad) // a nil Grad leaves zeros
		p.Grad = dp.views[i]
	}
	for _, bk := range dp.buckets {
		r, err := collective.NewAllReducer(comm, bk.grad, collective.Avg, collective.AllReducerOptions{Compression: opts.Compression})
		if err != nil { // checked by checkLocal: cannot happen
			dp.Close()
			return nil, fmt.Errorf("parallel: NewDataParallel: %w", err)
		}
		bk.reducer = r
	}
	return dp, nil
}

// broadcastData copies rank 0's parameter values to every rank, bucket by
// bucket through the gradient buffers (not in use yet): no extra memory.
func (dp *DataParallel) broadcastData(ctx context.Context) error {
	for _, bk := range dp.buckets {
		if dp.comm.Rank() == 0 {
			off := 0
			for _, i := range bk.params {
				off += copy(bk.grad[off:], dp.params[i].Data)
			}
		}
		if err := collective.Broadcast(ctx, dp.comm, bk.grad, 0); err != nil {
			return err
		}
		off := 0
		for _, i := range bk.params {
			off += copy(dp.params[i].Data, bk.grad[off:])
		}
	}
	return nil
}

// Ready says that p.Grad is final for this step: once every parameter of
// p's bucket (and of every bucket before it) is ready, the bucket's
// AllReduce starts in the background. p is one of the pointers given to
// NewDataParallel. p.Grad must not be written again until Sync returns.
// Ready is optional, and safe to call from several goroutines at once.
//
// Ready on a parameter that is not one of this DataParallel's, or twice for
// one parameter in a step, is a bug in the caller: the next Sync reports it
// (and, as the ranks can no longer agree on the step, aborts the
// communicator so that every rank stops).
func (dp *DataParallel) Ready(p *Param) {
	i, ok := dp.index[p]
	if !ok {
		name := "<nil>"
		if p != nil {
			name = fmt.Sprintf("%q", p.Name)
		}
		dp.fault(fmt.Errorf("%w: Ready(%s): not a parameter of this DataParallel", collective.ErrInvalid, name))
		return
	}
	step := dp.step.Load()
	if dp.marked[i].Swap(step) == step {
		dp.fault(fmt.Errorf("%w: Ready(%q) called twice in step %d", collective.ErrInvalid, p.Name, step))
		return
	}
	dp.readies.Add(1)
	if !sameSlice(p.Grad, dp.views[i]) {
		dp.fault(replacedGrad(p))
		return
	}
	if !dp.syncOn.Load() {
		return
	}
	b := dp.bucketOf[i]
	if dp.buckets[b].pending.Add(-1) == 0 {
		dp.bucketFull(b)
	}
}

// bucketFull prepares bucket b, whose parameters are all ready, and starts
// every prepared bucket from the first not started yet, in index order.
func (dp *DataParallel) bucketFull(b int) {
	bk := dp.buckets[b]
	if dp.summed {
		addTo(bk.grad, bk.acc) // outside the lock: other buckets fill meanwhile
	}
	dp.mu.Lock()
	defer dp.mu.Unlock()
	bk.prepared = true
	for dp.launched < len(dp.buckets) && dp.buckets[dp.launched].prepared {
		dp.startBucket(context.Background(), dp.launched)
	}
}

// startBucket starts bucket b's AllReduce (mu held).
func (dp *DataParallel) startBucket(ctx context.Context, b int) {
	if err := dp.buckets[b].reducer.Start(ctx); err != nil && dp.misuse == nil {
		dp.misuse = err
	}
	dp.launched++
}

// fault records the first misuse of the step, for Sync to report.
func (dp *DataParallel) fault(err error) {
	dp.mu.Lock()
	if dp.misuse == nil {
		dp.misuse = err
	}
	dp.mu.Unlock()
}

// Sync ends a step: it starts the reduction of every bucket not started yet
// (a parameter never marked ready is reduced with its current gradient),
// waits for all of them, and leaves in every p.Grad the average of p.Grad
// over the ranks. With synchronisation off (SetSync), it only adds the
// step's gradients to the local sum (leaving zeros in p.Grad) and
// communicates nothing.
//
// If ctx ends before the reductions finish, Sync aborts the communicator
// (the ranks can no longer agree on this step) and returns ctx's cause. Any
// error leaves the communicator aborted, on every rank.
func (dp *DataParallel) Sync(ctx context.Context) error {
	switch {
	case dp.closed:
		return fmt.Errorf("parallel: Sync on rank %d: %w: the DataParallel is closed", dp.comm.Rank(), collective.ErrClosed)
	case dp.failed != nil:
		return dp.failed
	}
	for i, p := range dp.params {
		if !sameSlice(p.Grad, dp.views[i]) {
			dp.fault(replacedGrad(p))
			break
		}
	}
	dp.mu.Lock()
	misuse := dp.misuse
	dp.mu.Unlock()
	if misuse != nil {
		// This rank can no longer take part correctly: stop every rank now
		// rather than let them pair this step with another.
		err := dp.abort(misuse)
		dp.waitLaunched(ctx)
		dp.failed = fmt.Errorf("parallel: Sync on rank %d: %w", dp.comm.Rank(), err)
		return dp.failed
	}
	if !dp.syncOn.Load() {
		dp.accumulate()
		dp.endStep()
		return nil
	}
	dp.mu.Lock()
	for b := dp.launched; b < len(dp.buckets); b++ {
		if bk := dp.buckets[b]; !bk.prepared {
			if dp.summed {
				addTo(bk.grad, bk.acc)
			}
			bk.prepared = true
		}
		dp.startBucket(ctx, b)
	}
	dp.mu.Unlock()
	if err := dp.waitLaunched(ctx); err != nil {
		dp.failed = fmt.Errorf("parallel: Sync on rank %d, step %d: %w", dp.comm.Rank(), dp.step.Load(), dp.abort(err))
		return dp.failed
	}
	if !dp.logged {
		dp.logged = true
		dp.reportUnready(ctx)
	}
	dp.summed = false
	dp.endStep()
	return nil
}

// abort aborts the communicator with err (if nothing has yet): a step that
// failed on this rank, however, must not let the ranks pair its calls with
// the next step's. The error returned matches collective.ErrAborted.
func (dp *DataParallel) abort(err error) error {
	dp.comm.Abort(err)
	if errors.Is(err, collective.ErrAborted) {
		return err
	}
	return fmt.Errorf("%w (%w)", err, dp.comm.Err())
}

// waitLaunched waits for every started bucket and returns the first error.
func (dp *DataParallel) waitLaunched(ctx context.Context) error {
	var first error
	for b := range dp.launched {
		if err := dp.buckets[b].reducer.Wait(ctx); err != nil && first == nil {
			first = fmt.Errorf("bucket %d of %d: %w", b, len(dp.buckets), err)
		}
	}
	dp.launched = 0
	return first
}

// accumulate moves this micro-batch's gradients into the local sum,
// leaving zeros in the gradients: a Sync with no backward before it then
// reduces the sum alone, and a backward that adds into p.Grad rather than
// overwriting it accumulates correctly too.
func (dp *DataParallel) accumulate() {
	for _, bk := range dp.buckets {
		if !dp.summed {
			if bk.acc == nil {
				bk.acc = make([]float32, len(bk.grad))
			}
			copy(bk.acc, bk.grad)
		} else {
			addTo(bk.acc, bk.grad)
		}
		clear(bk.grad)
	}
	dp.summed = true
}

// endStep makes ready for the next step.
func (dp *DataParallel) endStep() {
	for _, bk := range dp.buckets {
		bk.pending.Store(int32(len(bk.params)))
		bk.prepared = false
	}
	dp.readies.Store(0)
	dp.step.Add(1)
}

// reportUnready logs, at debug level, the parameters the first synchronised
// step never marked ready: those the model's backward does not hand to
// Ready (unused, or a hook missing), which lose the overlap.
func (dp *DataParallel) reportUnready(ctx context.Context) {
	if !dp.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	step := dp.step.Load()
	var names []string
	for i, p := range dp.params {
		if dp.marked[i].Load() != step {
			names = append(names, p.Name)
		}
	}
	if len(names) > 0 {
		dp.log.Debug("parallel: parameters never marked ready in the first step; Sync reduced them with their current gradients",
			"step", step, "count", len(names), "of", len(dp.params), "params", names)
	}
}

// SetSync turns gradient synchronisation off (false) or back on (true),
// from the next step on, as PyTorch DDP's no_sync: see the package
// documentation for what accumulating micro-batches computes. It must be
// called between steps, before the step's first Ready: a call in the middle
// of a step is reported by the next Sync.
func (dp *DataParallel) SetSync(on bool) {
	if dp.syncOn.Load() == on {
		return
	}
	if dp.readies.Load() != 0 {
		dp.fault(fmt.Errorf("%w: SetSync(%v) in the middle of step %d, after Ready", collective.ErrInvalid, on, dp.step.Load()))
		return
	}
	dp.syncOn.Store(on)
}

// NoSync runs fn with synchronisation off, then turns it back on: the form
// of PyTorch's `with ddp.no_sync():`. Call Sync inside fn for each
// micro-batch; the first Sync after NoSync returns reduces the sum.
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
func (dp *DataParallel) Buckets() []BucketInfo {
	out := make([]BucketInfo, len(dp.buckets))
	for b, bk := range dp.buckets {
		out[b].Elements = len(bk.grad)
		for _, i := range bk.params {
			out[b].Params = append(out[b].Params, dp.params[i].Name)
		}
	}
	return out
}

// Close ends the DataParallel's background goroutines. It does not close
// the communicator. A reduction still in flight (Ready was called, Sync
// was not) is abandoned: the communicator is aborted, so that no rank waits
// for this one. Close is idempotent and returns nil.
func (dp *DataParallel) Close() error {
	if dp.closed {
		return nil
	}
	dp.closed = true
	for _, bk := range dp.buckets {
		if bk.reducer != nil {
			bk.reducer.Close()
		}
	}
	return nil
}

// sameSlice reports whether a is exactly b (same start and length).
func sameSlice(a, b []float32) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

func replacedGrad(p *Param) error {
	return fmt.Errorf("%w: %q's Grad no longer points into its bucket: write gradients into p.Grad, never replace the slice", collective.ErrInvalid, p.Name)
}

// addTo adds src to dst element-wise.
func addTo(dst, src []float32) {
	src = src[:len(dst)]
	for i := range dst {
		dst[i] += src[i]
	}
}
