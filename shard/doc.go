// Package shard is fully sharded data parallelism, PyTorch FSDP's and
// DeepSpeed ZeRO's: each rank of a communicator keeps only its shard of
// the model's parameters, gradients and optimizer state, and gathers a
// unit's full parameters just for the moment they are used.
//
// # Units
//
// A model is handed over as units, [][]*parallel.Param in forward order:
// typically one unit per layer or block. Each unit is one flat vector (its
// parameters back to back), padded with zeros to a multiple of N, the
// number of ranks it is sharded over (the communicator's size; the group
// size under Hybrid), and cut into N equal shards: rank r keeps shard r,
// elements [r·S, (r+1)·S) with S = ⌈size/N⌉. A unit smaller than N leaves
// some ranks only padding. A unit is gathered and reduced as one buffer,
// so units trade memory (a gathered unit is whole) for fewer, larger
// collectives.
//
// # Strategies
//
// What a rank keeps between uses of a unit, per parameter (Ψ parameters,
// N ranks, Adam's 8 bytes of state per parameter):
//
//	strategy        parameters  gradients  optimizer state  bytes per rank (ZeRO)
//	NoShard         full        full       full             16Ψ            (data parallel)
//	ShardOptimizer  full        full       shard            8Ψ + 8Ψ/N      (ZeRO-1)
//	ShardGradOp     full        shard      shard            4Ψ + 12Ψ/N     (ZeRO-2)
//	FullShard       shard       shard      shard            16Ψ/N          (ZeRO-3)
//	Hybrid          FullShard within groups of GroupSize ranks, replicated across groups (HSDP)
//
// plus bounded transient buffers: under FullShard and Hybrid, MaxGathered
// (by default Prefetch+1) gather buffers, each the largest unit's full
// parameters and full gradient (8 bytes per element); under ShardGradOp two
// full-gradient buffers. Memory reports what a rank holds, counted from
// the buffers themselves; on 10M parameters the counts equal the formulas
// above to the padding (see the repository README's table).
//
// # A step
//
// The calls follow FSDP's hooks, and every rank makes the same calls in the
// same order:
//
//	fs, err := shard.New(ctx, comm, units, shard.Options{Strategy: shard.FullShard})
//	if err != nil {
//		return err // the ranks' units differ: every rank says where
//	}
//	defer fs.Close()
//	for step := range steps {
//		x := batch(step, comm.Rank(), comm.Size()) // this rank's share of the global batch
//		for u := range units { // forward
//			fs.Gather(ctx, u) // the unit's full parameters; the next unit's gather starts now
//			x = layers[u].Forward(x)
//			if u < last {
//				fs.Release(u) // the full copy goes; the last unit stays for backward
//			}
//		}
//		dy := loss.Grad(x)
//		for u := last; u >= 0; u-- { // backward
//			fs.GatherBackward(ctx, u)  // full parameters again, p.Grad bound and zeroed
//			dy = layers[u].Backward(dy) // adds into p.Grad
//			fs.ReduceGrads(ctx, u)      // starts the reduce-scatter (Avg) in the background
//			fs.Release(u)
//		}
//		fs.Step(ctx, opt) // waits for the reductions; opt updates this rank's shards
//	}
//
// (errors checked in real code: examples/mnist/mode_fsdp.go is a complete
// one). Gather all-gathers the unit's shards straight into a gather buffer
// and points every p.Data of the unit into it; with Prefetch k it also
// starts the gathers of the next k units (in backward, GatherBackward's,
// the previous k), so that communication overlaps computation. At most
// MaxGathered units are gathered at once: a prefetch that would exceed the
// bound starts when a Release frees a buffer (torch's limit_all_gathers),
// so peak memory is known in advance. ReduceGrads starts averaging the
// unit's gradient over the ranks, a reduce-scatter of the full gradient
// into this rank's gradient shard, on a background goroutine, while the
// earlier units' backward runs. Step starts the reduction of any unit whose
// ReduceGrads was not called (a unit without backward reduces zero), waits
// for all of them and applies the optimizer to this rank's shards only;
// under ShardGradOp and ShardOptimizer it then starts all-gathering the
// updated shards into the full parameters, which the next Gather waits
// for.
//
// The collectives run in the order the calls issue them, on a
// communicator private to the FSDP (a Split of comm), so that the caller's
// own calls on comm (a loss AllReduce) cannot slip in between. A step
// allocates nothing.
//
// # Parameters and gradients
//
// From New on, the FSDP owns p.Data and p.Grad of every parameter: both
// are nil except between Gather (or GatherBackward) and Release, under
// every strategy, so that nothing reads a stale or half-gathered value.
// In forward (after Gather) p.Grad is nil: a layer's forward reads only
// p.Data. GatherBackward binds it to the unit's full gradient buffer, zeroed at the start of each accumulation, and backward
// ADDS into it; ReduceGrads unbinds it again. Do not zero gradients
// yourself. New copies rank 0's parameter values to every rank.
//
// As with parallel.DataParallel, the reduction is an average (Avg): if
// each rank's gradient is scaled by N/B for a global batch of B samples
// (nn.GlobalMeanScale), the averaged gradient is the gradient of the mean
// loss over the global batch, however the batch splits over the ranks.
//
// # Accumulation without communication
//
// SetGradSync(false), or NoSync, makes ReduceGrads keep each unit's full
// gradient instead of reducing it (FSDP2's set_requires_gradient_sync):
// the next micro-batch's backward adds to it, and the first ReduceGrads
// with synchronisation on again reduces the sum. The kept full gradients
// cost 4 bytes per parameter (Memory's Accumulation) under the strategies
// that otherwise keep only gradient shards.
//
// # The same numbers as DataParallel
//
// The optimizer is elementwise (Optimizer; the model library's SGD, Adam
// and AdamW), so updating a shard gives bitwise what updating the whole
// vector gives. What can differ from parallel.DataParallel is only the
// order in which the ranks' gradients are summed: the reduce-scatter of a
// unit and DataParallel's AllReduce of a bucket cut the vector into
// different chunks. When every partial sum is exact, order does not
// matter: with gradients that are integers and multiples of N (for
// example N·2^k·m with small integers m), every sum stays an integer below
// 2^24, and the division by N (a true division, as Avg does) is exact too.
// Then every strategy ends bitwise where DataParallel ends, for any N,
// unit sizes and prefetch, which the tests check for 10 steps of SGD with
// momentum and of Adam on 1 to 6 ranks. With real gradients the results
// agree to rounding: on MNIST the loss curves of every strategy and of
// -mode ddp agree to 5e-5 relative over 50 steps, with the same accuracy.
//
// # Checkpoints
//
// SaveFull writes one file on rank 0, in package checkpoint's format:
// every parameter whole, named by its Name, and the optimizer state
// unsharded, one whole tensor per parameter and state value named
// "<param>.<state name>" (fc0.weight.exp_avg), the layout of the model
// library's ParamOptimizer, so parallel.DataParallel and a single process
// load it; plus the metadata below. Rank 0 gathers it unit by unit and
// holds the whole model while it writes.
//
// SaveSharded writes a directory that every rank sees (a shared file
// system), and nobody gathers anything:
//
//	meta.ckpt                        rank 0: the caller's Step, Epoch, RNG, Meta and
//	                                 tensors, and the layout (below); written last: the commit
//	shard-<id>-<r>-of-<n>.ckpt       rank r of n: for every parameter, the part in its
//	                                 shard (a checkpoint.Tensor slice: the whole
//	                                 parameter's Shape, its Offset, the values), and
//	                                 the same slice of each optimizer state value
//	                                 ("<param>.<state name>"); Meta shard.id, shard.rank,
//	                                 shard.world
//
// Every file is a checkpoint file (CRC-32C of the header and of every
// tensor; any truncation, extra byte or flipped bit is refused), readable
// with package checkpoint. The layout is in meta.ckpt's metadata, as text:
//
//	shard.format             "1"
//	shard.id                 the save's id, 16 hex digits; shard files carry it
//	shard.world              n, the ranks that wrote shard files (the group size under Hybrid)
//	shard.strategy           the strategy that saved it (informative)
//	shard.params             JSON [[name, length], ...], every parameter in unit order
//	shard.units              JSON [parameters per unit, ...]: with shard.params and
//	                         shard.world, which file holds which elements
//	shard.optimizer_steps    optimizer steps taken
//	shard.optimizer_state    JSON [state name, ...] ([] before the first Step)
//
// A save first writes every shard file under a new id (each atomically:
// temporary file, sync, rename), then, once every rank has succeeded, rank
// 0 replaces meta.ckpt atomically: a crash at any point leaves the previous
// meta.ckpt and its shard files, which Load keeps reading; after the
// commit rank 0 removes the previous save's files.
//
// Load reads either kind. From a sharded checkpoint each rank reads
// meta.ckpt and only the shard files that overlap what it keeps, and
// copies the overlapping elements: a checkpoint saved at any N, under any
// strategy and unit grouping, loads at any other (the parameters must be
// the same: names and lengths). Saving at N = 4 after k steps and loading
// at N = 2 or 3 ends, after m more steps, bitwise where an uninterrupted
// run of k+m steps at the new N ends (with exact gradients, as above).
//
// # Failures
//
// Bad input gives every rank an error naming the problem: the ranks agree
// on a verdict with a collective before anyone acts, so no rank is left
// waiting. New refuses units or options that differ between ranks (naming
// the first unit and parameter that differ; collective.ErrMismatch) or are
// invalid (collective.ErrInvalid). Load refuses a missing checkpoint
// (fs.ErrNotExist), a truncated, corrupt or inconsistent one (a shard file
// missing or of another save: checkpoint.ErrCorrupt) and one of another
// model or optimizer (checkpoint.ErrInvalid), changing nothing. A call out
// of order on one rank (Release of a unit not gathered, ReduceGrads
// without GatherBackward, Step with a unit gathered...) is a bug in the
// caller: the rank returns an error saying so and aborts the communicators,
// so that every other rank's next call fails naming it. Ranks that gather
// or reduce different units of the same sizes (which no collective can
// tell apart) are caught by Step, which compares a hash of the collectives
// each rank issued since the last Step before any optimizer update. A rank
// that dies (killed, lost link) fails every other rank's next call within
// the communicator's failure detection (milliseconds for a killed process),
// with an error matching collective.ErrAborted that names it.
package shard
