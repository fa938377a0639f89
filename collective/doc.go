// Package collective is ringo's public API: a communicator (Comm) of ranks,
// and the collectives that move and reduce buffers across them.
//
//	comm, err := collective.Init(ctx) // from RINGO_*, torchrun, OpenMPI or Slurm env
//	defer comm.Close()
//	err = collective.AllReduce(ctx, comm, grads, collective.Avg)
//
// Calls on one Comm run one at a time, in the order they are made; every rank
// must make the same calls in the same order. A rank whose call differs from
// its peers' (kind, element type, count, root or op) makes the call fail with
// an error naming both calls: at once on the ranks that exchange data with
// it, and on the others either at once or, if their own neighbours agreed
// with them and their call completed, on their next call. The check rides on
// the frames themselves and costs no extra message. Any failure (a lost peer, a
// mismatch, a timeout, a cancelled context, an invalid argument) aborts the
// communicator on every rank: the call and every later one return an error
// that matches ErrAborted, and the Comm must be closed and formed again.
//
// The promise: a call returns nil only when its buffer holds the result that
// every rank computed for the same call; no path returns nil otherwise, and
// every rank ends every collective with bitwise-identical results. A call
// the caller abandons (its context done when it is made, while it waits for
// its turn behind earlier calls, or during the call) still takes its place in
// the order and aborts the communicator on every rank, at once: the other
// ranks' calls fail promptly with an error that matches ErrAborted and
// context.Canceled (or DeadlineExceeded) and names the rank and the call, as
// in "rank 1 abandoned AllReduce(float32, count=1, Sum) at op #7". (A peer
// to which the abandoning rank was still writing a frame, one the peer had
// not asked for yet, may instead see that rank as lost: the notice cannot
// overtake the frame.) A rank can therefore never pair its next call with
// its peers' abandoned one.
// Cancelling a context is thus a way to abandon the communicator, not to
// skip one call.
//
// Sub-communicators come from Split (MPI_Comm_split) and Group
// (torch.distributed.new_group), both calls on the parent. Each has its own
// connections, issue order and failure: a data-parallel group and a pipeline
// group of the same ranks can run at the same time from different goroutines
// without their frames ever queueing behind each other's.
//
//	dp, err := world.Split(ctx, world.Rank()%stages, world.Rank()) // data parallel
//	pp, err := world.Split(ctx, world.Rank()/stages, world.Rank()) // pipeline stages
//
// Send and Recv move a buffer between two ranks, on connections of their own
// (one per direction of a pair, made on first use), so they never wait behind
// a collective. Between two ranks, the k-th Send meets the k-th Recv; a tag,
// type or count that differs fails both with ErrMismatch. An abandoned Send
// or Recv counts as the k-th all the same and aborts the communicator, so the
// next Send never meets the previous Recv. Only a call refused for its
// arguments (a peer that is not a rank, a negative tag) takes no place. A
// Send's nil says its message was handed to the connection (its buffer is
// free again); the matching Recv then returns nil with exactly that message,
// or an error.
package collective
