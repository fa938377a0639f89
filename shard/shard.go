package shard

import (
	"context"
	"errors"
	"fmt"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/parallel"
)

// FSDP trains a model whose parameters, gradients and optimizer state are
// sharded over the ranks of a communicator. See the package documentation.
//
// Its methods are called by one goroutine, in the same order on every rank.
type FSDP struct {
	comm   *collective.Comm // the caller's: agreement, step checks, checkpoints
	shardC *collective.Comm // private: this rank's shard group (all ranks unless Hybrid)
	replC  *collective.Comm // Hybrid: the ranks that hold the same shard as this one
	gw, rw *worker          // the workers of shardC and replC

	opts   Options // normalized
	units  []*unit
	params []*parallel.Param
	nShard int // ranks a unit is sharded over (GroupSize under Hybrid)
	rank   int // this rank's shard index, shardC.Rank()

	maxPadded int
	slots     []*slot     // FullShard, Hybrid: the gather buffers
	gradSlots []*gradSlot // ShardGradOp: the full-gradient buffers
	nextSlot  int         // round robin over slots and gradSlots where any will do

	// Prefetch: the units to gather ahead, in order.
	want     []int
	wantNext int // want[wantNext:] are still to be issued

	sync     bool // gradient synchronisation on
	steps    int  // optimizer steps taken
	optK     int  // optimizer state values per element, once known
	optNames []string
	trace    uint64 // hash of the collectives issued since the last Step's check
	check    []int64

	failed error
	closed bool
}

// unit is one unit's storage and state.
type unit struct {
	index  int
	params []*parallel.Param
	offs   []int // param j is elements [offs[j], offs[j+1]) of the unit
	size   int   // elements
	shard  int   // elements per rank, ⌈size/nShard⌉
	padded int   // nShard·shard
	lo, hi int   // this rank's real elements: [lo, hi) of the unit (hi ≤ lo: none)

	// Persistent storage.
	data      []float32 // this rank's parameter shard (a view into full unless shardsParams)
	full      []float32 // the full parameters, unless shardsParams
	gradShard []float32 // this rank's reduced gradient (a view into fullGrad for ShardOptimizer; nil for NoShard)
	fullGrad  []float32 // ShardOptimizer, NoShard: the full gradient
	accum     []float32 // shardsGrads: the full gradient kept while accumulating; made on first need
	state     []float32 // the optimizer state of this rank's elements

	// Step state.
	slot         int  // the gather buffer holding its parameters, -1 for none
	gathered     bool // between Gather (or GatherBackward) and Release
	backward     bool // between GatherBackward and ReduceGrads: its p.Grad is bound
	accumulating bool // its full gradient holds micro-batch sums not reduced yet
	reduced      bool // its reduction was issued this step
	gradBuf      []float32
	gradSlot     int // ShardGradOp: the gradient buffer bound, -1 for none

	gather op // the AllGather into its parameters
	reduce op // the reduction of its gradient
}

// slot is one gather buffer: a unit's full parameters, and its full
// gradient during backward.
type slot struct {
	params, grads []float32
	unit          int   // the unit using params, -1 for none
	gradsOf       *unit // the unit whose reduction last read grads (it may still run)
}

// gradSlot is one of ShardGradOp's full-gradient buffers.
type gradSlot struct {
	grads   []float32
	bound   *unit // the unit in backward with it
	gradsOf *unit // the unit whose reduction last read it
}

// New shards units, the model's parameters grouped into units in forward
// order (typically one unit per layer or block: each unit is gathered and
// reduced as one flat buffer), over comm. It is a collective call on comm:
// every rank calls it with the same units (names and lengths, in the same
// order) and options, or every rank gets an error (matching
// collective.ErrMismatch) naming the first difference; an invalid list on
// any rank fails every rank (matching collective.ErrInvalid).
//
// New copies rank 0's parameter values to every rank, keeps this rank's
// shard of each unit, and from then on owns p.Data and p.Grad of every
// parameter: they are nil except between Gather and Release (see the
// package documentation). It splits comm into private communicators for
// its collectives; comm itself serves its agreements, its per-step check
// and checkpoints, in the caller's order. Close the FSDP when done; it does
// not close comm.
func New(ctx context.Context, comm *collective.Comm, units [][]*parallel.Param, opts Options) (*FSDP, error) {
	if comm == nil {
		return nil, fmt.Errorf("shard: New: %w: nil communicator", collective.ErrInvalid)
	}
	opts, local := opts.normalize(comm.Size())
	if local != nil {
		local = fmt.Errorf("%w: Options: %w", collective.ErrInvalid, local)
	} else {
		local = checkUnits(units)
	}
	group, err := agree(ctx, comm, units, opts, local)
	if err != nil {
		return nil, fmt.Errorf("shard: New on rank %d: %w", comm.Rank(), err)
	}
	if opts.GroupSize == 0 {
		opts.GroupSize = group
	}
	fs := &FSDP{comm: comm, opts: opts, nShard: opts.GroupSize, sync: true, check: make([]int64, 2)}
	if err := fs.split(ctx); err != nil {
		return nil, fmt.Errorf("shard: New on rank %d: %w", comm.Rank(), err)
	}
	fs.rank = fs.shardC.Rank()
	fs.build(units)
	if err := fs.copyRankZero(ctx); err != nil {
		fs.closeComms()
		return nil, fmt.Errorf("shard: New on rank %d: copying rank 0's parameters: %w", comm.Rank(), err)
	}
	room := 2*len(fs.units) + 4
	fs.gw = newWorker(fs.shardC, room)
	if fs.replC != nil {
		fs.rw = newWorker(fs.replC, room)
	}
	return fs, nil
}

// checkUnits checks one rank's units on their own.
func checkUnits(units [][]*parallel.Param) error {
	if len(units) == 0 {
		return fmt.Errorf("%w: no units", collective.ErrInvalid)
	}
	names := make(map[string]bool)
	seen := make(map[*parallel.Param]bool)
	for u, ps := range units {
		if len(ps) == 0 {
			return fmt.Errorf("%w: unit %d has no parameters", collective.ErrInvalid, u)
		}
		for j, p := range ps {
			switch {
			case p == nil:
				return fmt.Errorf("%w: unit %d's parameter #%d is nil", collective.ErrInvalid, u, j)
			case p.Name == "":
				return fmt.Errorf("%w: unit %d's parameter #%d has no name", collective.ErrInvalid, u, j)
			case names[p.Name]:
				return fmt.Errorf("%w: two parameters are called %q (unit %d's #%d is the second)", collective.ErrInvalid, p.Name, u, j)
			case seen[p]:
				return fmt.Errorf("%w: parameter %q is in two units", collective.ErrInvalid, p.Name)
			case p.Grad != nil && len(p.Grad) != len(p.Data):
				return fmt.Errorf("%w: parameter %q has %d values but %d gradients", collective.ErrInvalid, p.Name, len(p.Data), len(p.Grad))
			}
			names[p.Name], seen[p] = true, true
		}
	}
	return nil
}

// split makes the private communicators: a copy of comm, or under Hybrid
// the shard group (consecutive ranks) and the replica group (the ranks
// with the same index in every group).
func (fs *FSDP) split(ctx context.Context) error {
	r := fs.comm.Rank()
	if fs.opts.Strategy != Hybrid {
		c, err := fs.comm.Split(ctx, 0, r)
		fs.shardC = c
		return err
	}
	g := fs.opts.GroupSize
	c, err := fs.comm.Split(ctx, r/g, r)
	if err != nil {
		return err
	}
	fs.shardC = c
	if fs.replC, err = fs.comm.Split(ctx, r%g, r); err != nil {
		fs.shardC.Close()
	}
	return err
}

func (fs *FSDP) closeComms() {
	if fs.shardC != nil {
		fs.shardC.Close()
	}
	if fs.replC != nil {
		fs.replC.Close()
	}
}

// build lays out the units and allocates every buffer the strategy keeps.
func (fs *FSDP) build(units [][]*parallel.Param) {
	st := fs.opts.Strategy
	for u, ps := range units {
		un := &unit{index: u, params: ps, offs: make([]int, len(ps)+1), slot: -1, gradSlot: -1,
			gather: newOp(), reduce: newOp()}
		for j, p := range ps {
			un.offs[j+1] = un.offs[j] + len(p.Data)
		}
		un.size = un.offs[len(ps)]
		un.shard = (un.size + fs.nShard - 1) / fs.nShard
		un.padded = un.shard * fs.nShard
		un.lo = fs.rank * un.shard
		un.hi = min(un.size, un.lo+un.shard)
		fs.maxPadded = max(fs.maxPadded, un.padded)
		if st.shardsParams() {
			un.data = make([]float32, un.shard)
		} else {
			un.full = make([]float32, un.padded)
			un.data = un.full[un.lo : un.lo+un.shard]
		}
		switch st {
		case FullShard, ShardGradOp, Hybrid:
			un.gradShard = make([]float32, un.shard)
		case ShardOptimizer:
			un.fullGrad = make([]float32, un.padded)
			un.gradShard = un.fullGrad[un.lo : un.lo+un.shard]
		case NoShard:
			un.fullGrad = make([]float32, un.padded)
		}
		fs.units = append(fs.units, un)
		fs.params = append(fs.params, ps...)
	}
	for range fs.opts.MaxGathered {
		fs.slots = append(fs.slots, &slot{params: make([]float32, fs.maxPadded), grads: make([]float32, fs.maxPadded), unit: -1})
	}
	if st == ShardGradOp {
		for range 2 {
			fs.gradSlots = append(fs.gradSlots, &gradSlot{grads: make([]float32, fs.maxPadded)})
		}
	}
	fs.want = make([]int, 0, fs.opts.Prefetch)
}

// copyRankZero gives every rank rank 0's parameter values, unit by unit
// (through a gather buffer or the unit's own full buffer), and leaves every
// p.Data and p.Grad nil.
func (fs *FSDP) copyRankZero(ctx context.Context) error {
	var staging []float32
	if len(fs.slots) > 0 {
		staging = fs.slots[0].params
	}
	for _, u := range fs.units {
		buf := u.full
		if buf == nil {
			buf = staging[:u.padded]
		}
		clear(buf)
		if fs.comm.Rank() == 0 {
			for j, p := range u.params {
				copy(buf[u.offs[j]:u.offs[j+1]], p.Data)
			}
		}
		if err := collective.Broadcast(ctx, fs.comm, buf, 0); err != nil {
			return err
		}
		if u.full == nil {
			copy(u.data, buf[u.lo:u.lo+u.shard])
		}
	}
	for _, p := range fs.params {
		p.Data, p.Grad = nil, nil
	}
	return nil
}

// Strategy is the strategy the FSDP runs.
func (fs *FSDP) Strategy() Strategy { return fs.opts.Strategy }

// Options are the options in effect, defaults filled in.
func (fs *FSDP) Options() Options { return fs.opts }

// Units is the number of units.
func (fs *FSDP) Units() int { return len(fs.units) }

// UnitParams returns unit u's parameters (the FSDP's own slice: do not
// modify it).
func (fs *FSDP) UnitParams(u int) []*parallel.Param { return fs.units[u].params }

// Params returns every parameter, unit by unit, in forward order.
func (fs *FSDP) Params() []*parallel.Param { return fs.params }

// Comm returns the communicator given to New.
func (fs *FSDP) Comm() *collective.Comm { return fs.comm }

// Steps is the number of optimizer steps taken (restored by loading a
// checkpoint).
func (fs *FSDP) Steps() int { return fs.steps }

// Close waits for the collectives in flight, ends the FSDP's goroutines and
// closes its private communicators; it does not close the communicator
// given to New. The parameters are left nil. Close is idempotent and
// returns nil.
func (fs *FSDP) Close() error {
	if fs.closed {
		return nil
	}
	fs.closed = true
	if fs.failed == nil {
		fs.failed = errClosed
	}
	fs.gw.stop()
	if fs.rw != nil {
		fs.rw.stop()
	}
	fs.closeComms()
	for _, p := range fs.params {
		p.Data, p.Grad = nil, nil
	}
	return nil
}

var errClosed = fmt.Errorf("%w: the FSDP is closed", collective.ErrInvalid)

// usable returns the error that ended the FSDP, if any.
func (fs *FSDP) usable() error { return fs.failed }

// fail ends the FSDP with err: the ranks can no longer agree on what comes
// next, so every communicator it uses is aborted, and every rank's next
// call fails (naming this rank's cause) instead of waiting for this one.
// It returns err.
func (fs *FSDP) fail(err error) error {
	if fs.failed == nil {
		fs.failed = err
		cause := fmt.Errorf("shard: rank %d: %w", fs.comm.Rank(), err)
		for _, c := range []*collective.Comm{fs.shardC, fs.replC, fs.comm} {
			if c != nil && c.Err() == nil {
				c.Abort(cause)
			}
		}
	}
	return err
}

// misuse is a call made out of order on this rank: a bug in the caller.
func (fs *FSDP) misuse(format string, a ...any) error {
	return fs.fail(fmt.Errorf("%w: %s", collective.ErrInvalid, fmt.Sprintf(format, a...)))
}

// wait waits for o's call. If ctx ends first the FSDP fails: the call still
// runs, and the ranks can no longer agree on what comes after it.
func (fs *FSDP) wait(ctx context.Context, o *op) error {
	if !o.busy {
		return nil
	}
	if ctx.Err() != nil {
		return fs.fail(fmt.Errorf("abandoned a collective: %w", context.Cause(ctx)))
	}
	select {
	case err := <-o.done:
		o.busy = false
		if err != nil {
			return fs.fail(err)
		}
		return nil
	case <-ctx.Done():
		return fs.fail(fmt.Errorf("abandoned a collective while waiting for it: %w", context.Cause(ctx)))
	}
}

// unitIndex checks u.
func (fs *FSDP) unitIndex(call string, u int) (*unit, error) {
	if fs.failed != nil {
		if errors.Is(fs.failed, errClosed) {
			return nil, fmt.Errorf("shard: %s(%d): %w", call, u, fs.failed)
		}
		return nil, fmt.Errorf("shard: %s(%d) on rank %d: an earlier call failed: %w", call, u, fs.comm.Rank(), fs.failed)
	}
	if u < 0 || u >= len(fs.units) {
		return nil, fmt.Errorf("shard: %s(%d) on rank %d: %w", call, u, fs.comm.Rank(),
			fs.misuse("there are units 0 to %d", len(fs.units)-1))
	}
	return fs.units[u], nil
}
