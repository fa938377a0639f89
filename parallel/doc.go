// Package parallel is ringo's training layer: ways to spread one model's
// training over the ranks of a communicator. It works on flat float32
// parameter and gradient slices (Param), so any model code (hand-written,
// gonum, or a framework's tensors viewed as slices) can hand its tensors
// over, and it reaches the other ranks only through package collective.
//
// # Data parallelism
//
// DataParallel keeps a full copy of the model on every rank; each rank
// computes gradients on its share of the global batch, and Sync replaces
// every gradient with its average over the ranks, as PyTorch's
// DistributedDataParallel and Horovod do. A training loop:
//
//	comm, err := collective.Init(ctx) // ringrun, torchrun, mpirun or srun env
//	if err != nil {
//		return err
//	}
//	defer comm.Close()
//	params := model.Params() // []*parallel.Param, in forward order
//	dp, err := parallel.NewDataParallel(ctx, comm, params, parallel.DataParallelOptions{})
//	if err != nil {
//		return err // e.g. the ranks' models differ: every rank says which parameter
//	}
//	defer dp.Close()
//	for step := range steps {
//		x, y := batch(step, comm.Rank(), comm.Size()) // this rank's share of the global batch
//		model.Forward(x, y)
//		model.Backward(dp.Ready) // writes each p.Grad, last layer first, and calls dp.Ready(p)
//		if err := dp.Sync(ctx); err != nil {
//			return err // a lost, killed or mismatched rank: every rank gets an error
//		}
//		opt.Step(params) // every p.Grad is the average over the ranks: every rank steps alike
//	}
//
// NewDataParallel copies rank 0's parameters to every rank, so all ranks
// start from the same model, and checks that every rank has the same
// parameters (names and lengths, in the same order).
//
// # Gradients, buckets and overlap
//
// Each p.Grad is re-pointed at construction into a flat bucket buffer (its
// values kept): model code writes gradients into p.Grad, never replaces the
// slice, and the buckets are reduced in place, with no copy in or out
// (PyTorch's gradient_as_bucket_view). Buckets hold parameters in reverse
// order, since backward produces the last layer's gradients first; the
// first bucket is small (DataParallelOptions.FirstBucketBytes) so that
// communication starts early, the others up to BucketBytes.
//
// Ready(p) says that p.Grad is final for this step. A bucket whose
// parameters are all ready starts its AllReduce at once, in the background,
// while backward goes on with the earlier layers: communication overlaps
// computation. Buckets start strictly in index order on every rank, whatever
// the order in which parameters become ready (a full bucket waits for the
// ones before it), so ranks can never pair different buckets. Sync starts
// whatever has not started and waits for all of it. A parameter never marked
// ready is still reduced, with its current gradient: a model whose ranks use
// different branches (unused parameters) needs nothing special, and calling
// Ready at all is optional (without it, Sync reduces everything after
// backward, with no overlap).
//
// # The gradient convention and accumulation
//
// Each step's backward writes (overwrites) the step's gradient into p.Grad.
// Sync averages it over the ranks (collective.Avg): if every rank's gradient
// is the mean over its b samples, the result is the mean over the global
// batch of N·b samples, what one process computes on the whole batch.
//
// SetSync(false), or NoSync, makes Sync communicate nothing: it moves this
// micro-batch's gradients into a local sum kept by DataParallel, leaving
// zeros in p.Grad for the next backward. The next synchronising Sync adds the sum to the
// last micro-batch's p.Grad and averages over the ranks. So after k
// micro-batches p.Grad is the average over the ranks of each rank's SUM of
// k micro-batch gradients, summed left to right (g1+g2)+g3...: as in PyTorch,
// scaling by 1/k (dividing each micro-batch's loss by k) is the caller's, and
// with that scaling the result equals one step on a k times larger batch
// (bitwise, when the gradients are exactly representable, as the tests show;
// otherwise up to floating-point summation order).
//
// # Failures
//
// A rank that fails, is killed, calls Sync one step fewer, or marks a
// parameter that is not its own ready makes every rank's Sync return an
// error (matching collective.ErrAborted, and naming the rank and the cause):
// never a hang, never a wrong average. The communicator is then aborted;
// restart the job, for example from a checkpoint (SaveCheckpoint,
// LoadCheckpoint and package checkpoint).
//
// The check rides on the collectives' signatures (kind, type, length, op),
// so one case escapes it: a rank one Sync short whose next call is an
// AllReduce exactly like a bucket's (float32, Avg, the bucket's length), on
// a model of a single bucket, is paired with that bucket. With two buckets
// or more, the next bucket fails every rank's Sync.
package parallel
