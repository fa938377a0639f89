// Package collective is ringo's public API: a communicator (Comm) of ranks,
// and the collectives that move and reduce buffers across them.
//
//	comm, err := collective.Init(ctx) // from RINGO_*, torchrun, OpenMPI or Slurm env
//	if err != nil {
//		log.Fatal(err)
//	}
//	defer comm.Close()
//	if err := collective.AllReduce(ctx, comm, grads, collective.Avg); err != nil {
//		log.Fatal(err)
//	}
//
// A program is one rank of a job: a launcher (ringrun, torchrun, mpirun,
// srun) starts one process per rank and tells each its rank in the
// environment, which Init reads (ConfigFromEnv); New takes the same as a
// Config. In tests, Local forms every rank of a job in one process.
//
// # Hosts
//
// By default (Config.Transport "auto") the ranks of one host talk through
// shared memory and the hosts through TCP; a rank's host is the one its
// kernel says (boot id, IPC and network namespace) unless Config.Host
// (RINGO_HOST) names one. LocalRank and LocalSize count a communicator's
// ranks on this rank's host. Where every host has the same number of ranks,
// more than one, AllReduce, Broadcast and AllGather may run hierarchically
// (within hosts, then across, then within), as the cost model decides.
//
// # Every rank, every call
//
// Calls on one Comm run one at a time, in the order they are made; every rank
// must make the same calls in the same order, with the same element type,
// op and root, and buffer lengths that agree as each call says. A rank whose
// call differs from its peers' (kind, element type, count, root or op) makes
// the call fail with an error naming both calls: at once on the ranks that
// exchange data with it, and on the others either at once or, if their own
// neighbours agreed with them and their call completed, on their next call.
// The check rides on the frames themselves and costs no extra message.
//
// Every rank ends every collective with bitwise-identical results. Float
// sums are not always bitwise those of a sequential loop: the order of the
// additions depends on the algorithm (and so on the size and world size),
// but it is the same on every rank.
//
// # Types and reductions
//
// Every collective takes any Elem type: int8, uint8, int32, uint32, int64,
// uint64, float32, float64. The reductions (AllReduce, ReduceScatter,
// Reduce) take Sum, Prod, Min and Max for every type, Avg for float32 and
// float64 only.
//
// # After an error
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
// Any failure (a lost peer, a mismatch, a timeout, a cancelled context, an
// invalid argument) aborts the communicator on every rank: the call and
// every later one return an error that matches ErrAborted and the class of
// the cause (ErrMismatch, ErrPeerLost, ErrTimeout, ErrInvalid, ...), and
// the Comm must be closed and formed again.
//
// A failed call never writes a buffer after it returned, and never writes
// the buffers it only reads (send). The buffers it writes (buf, recv) are
// unchanged when the error came before any data moved on this rank: the
// communicator was closed or already aborted, ctx was done before the call,
// or this rank's own arguments were wrong (ErrInvalid). Otherwise their
// contents are unspecified (some of the input, some partial or final
// results) and must not be used.
//
// # Sub-communicators and point-to-point
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
