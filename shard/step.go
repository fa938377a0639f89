package shard

import (
	"context"
	"fmt"

	"github.com/ringo-ml/ringo/collective"
)

// Gather makes unit u's full parameters available for its forward pass:
// when it returns, every p.Data of the unit is the whole parameter; p.Grad
// stays nil (forward has no gradient to write: GatherBackward binds it).
// Under FullShard and Hybrid it
// all-gathers the shards straight into a gather buffer (or waits for the
// prefetch that already did), and starts gathering the next Prefetch units
// in the background. Release(u) ends the use.
func (fs *FSDP) Gather(ctx context.Context, u int) error {
	un, err := fs.unitIndex("Gather", u)
	if err != nil {
		return err
	}
	if un.gathered {
		return fs.callErr("Gather", u, fs.misuse("unit %d is gathered already (Release it first)", u))
	}
	if err := fs.gatherParams(ctx, un, +1); err != nil {
		return fs.callErr("Gather", u, err)
	}
	fs.bindData(un)
	return nil
}

// GatherBackward makes unit u ready for its backward pass: its parameters
// full, as Gather makes them (gathering them again under FullShard and
// Hybrid, unless the unit was not released since its forward), and every
// p.Grad of the unit bound to the unit's full gradient buffer, zeroed at the
// start of each accumulation (see SetGradSync). Backward adds the unit's
// gradients into p.Grad; ReduceGrads(u) then reduces them. Prefetching runs
// backwards: the units before u.
func (fs *FSDP) GatherBackward(ctx context.Context, u int) error {
	un, err := fs.unitIndex("GatherBackward", u)
	if err != nil {
		return err
	}
	if un.backward {
		return fs.callErr("GatherBackward", u, fs.misuse("unit %d is in backward already (ReduceGrads ends it)", u))
	}
	if un.gathered {
		fs.setWant(un.index, -1)
		fs.prefetch()
	} else if err := fs.gatherParams(ctx, un, -1); err != nil {
		return fs.callErr("GatherBackward", u, err)
	}
	buf, err := fs.gradBuffer(ctx, un)
	if err != nil {
		return fs.callErr("GatherBackward", u, err)
	}
	fs.bindData(un)
	fs.bindGrad(un, buf)
	un.gradBuf, un.backward = buf, true
	return nil
}

// ReduceGrads says that unit u's backward is done: with synchronisation on
// it starts averaging the unit's gradient over the ranks in the background
// (a reduce-scatter into this rank's gradient shard; under NoShard an
// AllReduce; under Hybrid a reduce-scatter within the group and an
// AllReduce across groups), with it off it keeps the gradient for the next
// micro-batch to add to. Either way p.Grad is unbound (nil): the gradient
// must not be written until the next GatherBackward. Step waits for the
// reductions.
func (fs *FSDP) ReduceGrads(ctx context.Context, u int) error {
	un, err := fs.unitIndex("ReduceGrads", u)
	if err != nil {
		return err
	}
	if !un.backward {
		return fs.callErr("ReduceGrads", u, fs.misuse("unit %d's gradients are not bound: call GatherBackward(%d) before its backward", u, u))
	}
	for _, p := range un.params {
		p.Grad = nil
	}
	un.backward = false
	if !fs.sync {
		un.accumulating = true
		return nil
	}
	if un.reduced {
		return fs.callErr("ReduceGrads", u, fs.misuse("unit %d was reduced already in this step", u))
	}
	fs.issueReduce(un, un.gradBuf)
	if gs := un.gradSlot; gs >= 0 {
		fs.gradSlots[gs].bound = nil
		un.gradSlot = -1
	}
	return nil
}

// Release ends the use Gather or GatherBackward began: the unit's p.Data and
// p.Grad become nil, and under FullShard and Hybrid its gather buffer goes
// to the next prefetch. A unit in backward must have its gradients reduced
// first (ReduceGrads).
func (fs *FSDP) Release(u int) error {
	un, err := fs.unitIndex("Release", u)
	if err != nil {
		return err
	}
	switch {
	case !un.gathered:
		return fs.callErr("Release", u, fs.misuse("unit %d is not gathered", u))
	case un.backward:
		return fs.callErr("Release", u, fs.misuse("unit %d is in backward: call ReduceGrads(%d) before Release", u, u))
	}
	for _, p := range un.params {
		p.Data, p.Grad = nil, nil
	}
	un.gathered = false
	if un.slot >= 0 {
		fs.slots[un.slot].unit = -1
		un.slot = -1
		fs.prefetch()
	}
	return nil
}

// SetGradSync turns gradient synchronisation off (false) or back on, as
// FSDP2's set_requires_gradient_sync: with it off, ReduceGrads
// communicates nothing and each unit's full gradient is kept, so that the
// next micro-batch's backward adds to it; the first ReduceGrads with it on
// again reduces the sum. Call it between micro-batches (no unit in
// backward). Keeping the full gradients costs what data parallelism does:
// 4 bytes per parameter, reported by Memory as Accumulation.
func (fs *FSDP) SetGradSync(on bool) error {
	if err := fs.usable(); err != nil {
		return fmt.Errorf("shard: SetGradSync: %w", err)
	}
	for _, un := range fs.units {
		if un.backward {
			return fmt.Errorf("shard: SetGradSync on rank %d: %w", fs.comm.Rank(), fs.misuse("unit %d is in backward", un.index))
		}
	}
	fs.sync = on
	return nil
}

// NoSync runs fn with gradient synchronisation off, then turns it back on:
// the form of a `with no_sync():` block. Run the micro-batches before the
// last one in fn; the last one's ReduceGrads, after NoSync returns, reduce
// the sum.
func (fs *FSDP) NoSync(fn func() error) error {
	if err := fs.SetGradSync(false); err != nil {
		return err
	}
	ferr := fn()
	if err := fs.SetGradSync(true); err != nil && ferr == nil {
		ferr = err
	}
	return ferr
}

// Wait waits for every collective the FSDP has in flight: prefetched
// gathers, reductions, and the gathers Step starts after the update. A
// prefetched unit stays prefetched (its Gather then waits for nothing). A
// training loop has no need of it (every call waits for what it uses); it
// is for timing a step whole, or quiescing before work of one's own.
func (fs *FSDP) Wait(ctx context.Context) error {
	if err := fs.usable(); err != nil {
		return fmt.Errorf("shard: Wait on rank %d: %w", fs.comm.Rank(), err)
	}
	for _, un := range fs.units {
		for _, o := range []*op{&un.gather, &un.reduce} {
			if err := fs.wait(ctx, o); err != nil {
				return fmt.Errorf("shard: Wait on rank %d: unit %d: %w", fs.comm.Rank(), un.index, err)
			}
		}
	}
	return nil
}

// Step ends a training step: it starts the reduction of every unit whose
// ReduceGrads was not called in this step (with the gradient it holds: zero
// for a unit that had no backward), checks that every rank issued the same
// collectives since the last Step, waits for every reduction, and applies
// opt to this rank's shard of every unit (the whole unit under NoShard).
// Under ShardGradOp and ShardOptimizer it then starts all-gathering the
// updated shards, which the next Gather of each unit waits for.
//
// Every unit must be released, and synchronisation on. opt must keep the
// same state layout from step to step; its state is allocated on the
// first Step.
func (fs *FSDP) Step(ctx context.Context, opt Optimizer) error {
	if err := fs.usable(); err != nil {
		return fmt.Errorf("shard: Step on rank %d: %w", fs.comm.Rank(), err)
	}
	if err := fs.stepChecks(opt); err != nil {
		return fmt.Errorf("shard: Step on rank %d: %w", fs.comm.Rank(), err)
	}
	for _, un := range fs.units {
		if un.reduced {
			continue
		}
		buf, err := fs.gradBuffer(ctx, un)
		if err != nil {
			return fmt.Errorf("shard: Step on rank %d: %w", fs.comm.Rank(), err)
		}
		fs.issueReduce(un, buf)
		if gs := un.gradSlot; gs >= 0 {
			fs.gradSlots[gs].bound = nil
			un.gradSlot = -1
		}
	}
	if err := fs.checkTrace(ctx); err != nil {
		return fmt.Errorf("shard: Step on rank %d: %w", fs.comm.Rank(), err)
	}
	for _, un := range fs.units {
		if err := fs.wait(ctx, &un.reduce); err != nil {
			return fmt.Errorf("shard: Step on rank %d: reducing unit %d: %w", fs.comm.Rank(), un.index, err)
		}
		// A prefetch no Gather claimed holds parameters this step changes.
		if un.slot >= 0 && !un.gathered {
			if err := fs.wait(ctx, &un.gather); err != nil {
				return fmt.Errorf("shard: Step on rank %d: gathering unit %d: %w", fs.comm.Rank(), un.index, err)
			}
			fs.slots[un.slot].unit = -1
			un.slot = -1
		}
	}
	fs.want, fs.wantNext = fs.want[:0], 0
	if err := fs.update(opt); err != nil {
		return fmt.Errorf("shard: Step on rank %d: %w", fs.comm.Rank(), fs.fail(err))
	}
	for _, un := range fs.units {
		un.reduced = false
		if fs.opts.Strategy.regathers() {
			fs.issue(&un.gather, un, request{kind: allGather, send: un.data, recv: un.full})
		}
	}
	// The next forward starts with unit 0: its gather (and the next
	// Prefetch-1) can start now, overlapping whatever comes before it.
	fs.setWant(-1, +1)
	fs.prefetch()
	return nil
}

func (fs *FSDP) stepChecks(opt Optimizer) error {
	if opt == nil {
		return fs.misuse("no optimizer")
	}
	if !fs.sync {
		return fs.misuse("gradient synchronisation is off: the gradients were never reduced (SetGradSync(true) before the last micro-batch)")
	}
	for _, un := range fs.units {
		if un.gathered {
			return fs.misuse("unit %d is still gathered (Release it before Step)", un.index)
		}
	}
	// StateNames is checked once, when the state is made: it allocates.
	k := opt.StateLen(1)
	if fs.state() && (k != fs.optK || opt.StateLen(2) != 2*k) {
		return fs.misuse("the optimizer keeps %d state values per element; the state so far has %d", k, fs.optK)
	}
	if !fs.state() && (k < 0 || opt.StateLen(2) != 2*k || len(opt.StateNames()) != k) {
		return fs.misuse("the optimizer keeps %d state values per element but names %d", k, len(opt.StateNames()))
	}
	return nil
}

// state reports whether the optimizer state has been allocated.
func (fs *FSDP) state() bool { return fs.optNames != nil }

// update applies opt to this rank's elements of every unit.
func (fs *FSDP) update(opt Optimizer) error {
	if !fs.state() {
		fs.allocState(opt)
	}
	fs.steps++
	for _, un := range fs.units {
		var data, grad []float32
		if fs.opts.Strategy == NoShard {
			data, grad = un.full[:un.size], un.fullGrad[:un.size]
		} else {
			n := max(0, un.hi-un.lo)
			data, grad = un.data[:n], un.gradShard[:n]
		}
		if err := opt.Update(fs.steps, data, grad, un.state[:opt.StateLen(len(data))]); err != nil {
			fs.steps--
			return fmt.Errorf("%w: the optimizer refused unit %d: %w", collective.ErrInvalid, un.index, err)
		}
	}
	return nil
}

// allocState makes zero optimizer state for this rank's elements.
func (fs *FSDP) allocState(opt Optimizer) {
	fs.optK = opt.StateLen(1)
	fs.optNames = append([]string{}, opt.StateNames()...)
	for _, un := range fs.units {
		n := un.shard
		if fs.opts.Strategy == NoShard {
			n = un.size
		}
		un.state = make([]float32, fs.optK*n)
	}
}

// callErr wraps a method's error with the call and the rank.
func (fs *FSDP) callErr(call string, u int, err error) error {
	return fmt.Errorf("shard: %s(%d) on rank %d: %w", call, u, fs.comm.Rank(), err)
}

// bindData points the unit's p.Data at its full parameters.
func (fs *FSDP) bindData(un *unit) {
	full := un.full
	if un.slot >= 0 {
		full = fs.slots[un.slot].params
	}
	for j, p := range un.params {
		p.Data = full[un.offs[j]:un.offs[j+1]:un.offs[j+1]]
	}
}

func (fs *FSDP) bindGrad(un *unit, buf []float32) {
	for j, p := range un.params {
		p.Grad = buf[un.offs[j]:un.offs[j+1]:un.offs[j+1]]
	}
}

// gatherParams makes un's full parameters valid, issuing its gather if no
// prefetch did, and sets the prefetch to the Prefetch units after it in the
// direction dir.
func (fs *FSDP) gatherParams(ctx context.Context, un *unit, dir int) error {
	if !fs.opts.Strategy.shardsParams() {
		// The full parameters are kept; a Step's regather may be running.
		if err := fs.wait(ctx, &un.gather); err != nil {
			return err
		}
		un.gathered = true
		return nil
	}
	if un.slot < 0 {
		s := fs.freeSlot()
		if s < 0 {
			var err error
			if s, err = fs.evictPrefetch(ctx); err != nil {
				return err
			}
		}
		if s < 0 {
			return fs.misuse("%d units are gathered already, the MaxGathered bound (Release one first)", len(fs.slots))
		}
		fs.gatherInto(un, s)
	}
	un.gathered = true
	fs.setWant(un.index, dir)
	fs.prefetch()
	return fs.wait(ctx, &un.gather)
}

// gatherInto issues un's gather into slot s.
func (fs *FSDP) gatherInto(un *unit, s int) {
	sl := fs.slots[s]
	sl.unit, un.slot = un.index, s
	fs.issue(&un.gather, un, request{kind: allGather, send: un.data, recv: sl.params[:un.padded]})
}

func (fs *FSDP) freeSlot() int {
	for i, sl := range fs.slots {
		if sl.unit < 0 {
			return i
		}
	}
	return -1
}

// evictPrefetch frees the buffer of a prefetched unit no Gather has claimed
// (the lowest slot), once its gather is done; -1 if there is none.
func (fs *FSDP) evictPrefetch(ctx context.Context) (int, error) {
	for i, sl := range fs.slots {
		if sl.unit < 0 {
			continue
		}
		if v := fs.units[sl.unit]; !v.gathered {
			if err := fs.wait(ctx, &v.gather); err != nil {
				return -1, err
			}
			v.slot, sl.unit = -1, -1
			return i, nil
		}
	}
	return -1, nil
}

// setWant makes the Prefetch units after unit u in direction dir the
// ones to prefetch.
func (fs *FSDP) setWant(u, dir int) {
	fs.want, fs.wantNext = fs.want[:0], 0
	for i := 1; i <= fs.opts.Prefetch; i++ {
		v := u + dir*i
		if v < 0 || v >= len(fs.units) {
			break
		}
		fs.want = append(fs.want, v)
	}
}

// prefetch issues the wanted gathers, in order, while buffers are free.
// What it issues depends only on the calls made so far, never on timing,
// so every rank issues the same.
func (fs *FSDP) prefetch() {
	for ; fs.wantNext < len(fs.want); fs.wantNext++ {
		v := fs.units[fs.want[fs.wantNext]]
		if v.slot < 0 && !v.gathered {
			s := fs.freeSlot()
			if s < 0 {
				return
			}
			fs.gatherInto(v, s)
		}
	}
}

// gradBuffer returns the full gradient buffer un's backward adds into,
// once no reduction reads it, zeroed unless it holds micro-batch sums.
func (fs *FSDP) gradBuffer(ctx context.Context, un *unit) ([]float32, error) {
	var buf []float32
	var busy *unit // the unit whose reduction may still read buf
	switch {
	case un.fullGrad != nil:
		buf, busy = un.fullGrad, un
	case !fs.sync || un.accumulating:
		if un.accum == nil {
			un.accum = make([]float32, un.padded)
		}
		buf, busy = un.accum, un
	case un.slot >= 0:
		sl := fs.slots[un.slot]
		buf, busy = sl.grads[:un.padded], sl.gradsOf
		sl.gradsOf = un
	case fs.gradSlots != nil:
		gs := -1
		for i := range fs.gradSlots {
			if j := (fs.nextSlot + i) % len(fs.gradSlots); fs.gradSlots[j].bound == nil {
				gs = j
				break
			}
		}
		if gs < 0 {
			return nil, fs.misuse("%d units are in backward at once; ShardGradOp keeps %d gradient buffers (call ReduceGrads)", len(fs.gradSlots), len(fs.gradSlots))
		}
		fs.nextSlot = gs + 1
		g := fs.gradSlots[gs]
		buf, busy = g.grads[:un.padded], g.gradsOf
		g.bound, g.gradsOf, un.gradSlot = un, un, gs
	default:
		// A FullShard unit reduced by Step without a backward: any gather
		// buffer's gradient half (all are free at Step).
		sl := fs.slots[fs.nextSlot%len(fs.slots)]
		fs.nextSlot++
		buf, busy = sl.grads[:un.padded], sl.gradsOf
		sl.gradsOf = un
	}
	if busy != nil {
		if err := fs.wait(ctx, &busy.reduce); err != nil {
			return nil, err
		}
	}
	if !un.accumulating {
		clear(buf)
	}
	return buf, nil
}

// issueReduce starts the reduction of un's full gradient buf.
func (fs *FSDP) issueReduce(un *unit, buf []float32) {
	r := request{kind: reduceScatter, send: buf[:un.padded], recv: un.gradShard}
	switch fs.opts.Strategy {
	case NoShard:
		r = request{kind: allReduce, recv: buf[:un.padded]}
	case Hybrid:
		r.then = fs.rw
	}
	fs.issue(&un.reduce, un, r)
	un.reduced, un.accumulating = true, false
}

// issue queues r for un with o as its completion, and adds it to the trace
// of this step's collectives. The call runs in the background, past the
// method that issued it, so it does not take that method's context (a
// caller cancelling a context once the method returns must not abort the
// job): it is bounded by the communicator's timeout and failure detection,
// and whoever waits for it does so under its own context.
func (fs *FSDP) issue(o *op, un *unit, r request) {
	r.ctx = context.Background()
	fs.trace = (fs.trace ^ uint64(r.kind)<<56 ^ uint64(un.index)<<32 ^ uint64(len(r.send)+len(r.recv))) * 0x100000001b3
	o.issue(fs.gw, r)
}

// checkTrace compares this rank's trace of collectives since the last check
// with every other rank's: ranks that gathered or reduced different units
// (of the same sizes, which the collectives themselves cannot tell apart)
// fail here, before any optimizer step uses what they computed. The check
// runs on the caller's communicator, so it completes even when the ranks'
// private collectives went astray, and then aborts those.
func (fs *FSDP) checkTrace(ctx context.Context) error {
	h := int64(fs.trace)
	fs.check[0], fs.check[1] = h, -h
	fs.trace = 0
	if err := collective.AllReduce(ctx, fs.comm, fs.check, collective.Max); err != nil {
		return fs.fail(err)
	}
	if fs.check[0] != h || -fs.check[1] != h {
		return fs.fail(fmt.Errorf("%w: the ranks gathered or reduced different units since the last Step (every rank must call Gather, GatherBackward, ReduceGrads and Release in the same order)", collective.ErrMismatch))
	}
	return nil
}
