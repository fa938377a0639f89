package collective

import (
	"context"

	"github.com/ringo-ml/ringo/internal/codec"
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/link"
	"github.com/ringo-ml/ringo/ring"
)

// AllReduce reduces buf element-wise across all ranks, in place: afterwards
// every rank holds op(buf of rank 0, ..., buf of rank Size-1).
//
// Every rank passes a buf of the same length and the same op. T is any
// Elem; op is Sum, Prod, Min or Max, or Avg for float32 and float64. After
// an error buf is unspecified unless the call failed before moving data
// (see "After an error" in the package documentation).
//
// Bandwidth-bound calls send their traffic through Config.Compression's
// codec (see there).
func AllReduce[T Elem](ctx context.Context, c *Comm, buf []T, op Op) error {
	red, err := reducer[T](op)
	algo := c.allReduceAlgorithm(len(buf) * kernel.Size[T]())
	algo, comp := allReduceCodec[T](c, algo, op)
	// The codec rides in the otherwise unused root: ranks compressing
	// differently fail with ErrMismatch instead of decoding garbage.
	sig := signature[T](kindAllReduce, op, len(buf), int(comp))
	sig.Op |= uint8(algo) << 4
	if err := c.begin(ctx, sig); err != nil {
		return err
	}
	if err != nil {
		return c.end(err)
	}
	if comp != codec.None {
		return c.end(allReduceCompressed(c, comp, buf, red))
	}
	return c.end(allReduce(c, algo, buf, red))
}

// ReduceScatter reduces send element-wise across all ranks and leaves block
// Rank of the result in recv: len(send) must be Size·len(recv). recv may be
// exactly block Rank of send.
//
// Every rank passes the same len(recv) and the same op. T is any Elem; op
// is Sum, Prod, Min or Max, or Avg for float32 and float64. After an error
// recv is unspecified unless the call failed before moving data (see "After
// an error" in the package documentation); send is only read.
func ReduceScatter[T Elem](ctx context.Context, c *Comm, send, recv []T, op Op) error {
	red, err := reducer[T](op)
	if err := c.begin(ctx, signature[T](kindReduceScatter, op, len(recv), 0)); err != nil {
		return err
	}
	if err == nil && len(send) != c.size*len(recv) {
		err = invalidf("ReduceScatter needs len(send) = Size·len(recv) = %d·%d, got len(send) = %d", c.size, len(recv), len(send))
	}
	if err == nil {
		err = checkAlias(send, recv, c.rank, "ReduceScatter", "recv", "send")
	}
	if err != nil {
		return c.end(err)
	}
	return c.end(ring.ReduceScatter(c.ring, send, recv, red))
}

// AllGather concatenates every rank's send into recv, in rank order:
// len(recv) must be Size·len(send). send may be exactly block Rank of recv.
//
// Every rank passes the same len(send); T is any Elem. After an error recv
// is unspecified unless the call failed before moving data (see "After an
// error" in the package documentation); send is only read.
func AllGather[T Elem](ctx context.Context, c *Comm, send, recv []T) error {
	algo := c.allGatherAlgorithm(c.size * len(send) * kernel.Size[T]())
	sig := signature[T](kindAllGather, 0, len(send), 0)
	if algo == algoHier {
		sig.Op |= uint8(algo) << 4 // ranks that chose differently fail with ErrMismatch
	}
	if err := c.begin(ctx, sig); err != nil {
		return err
	}
	var err error
	if len(recv) != c.size*len(send) {
		err = invalidf("AllGather needs len(recv) = Size·len(send) = %d·%d, got len(recv) = %d", c.size, len(send), len(recv))
	}
	if err == nil {
		err = checkAlias(recv, send, c.rank, "AllGather", "send", "recv")
	}
	if err != nil {
		return c.end(err)
	}
	if algo == algoHier {
		return c.end(hierAllGather(c, send, recv))
	}
	return c.end(ring.AllGather(c.ring, send, recv))
}

// Broadcast copies root's buf into buf on every rank.
//
// Every rank passes the same root (0 <= root < Size) and a buf of the same
// length; T is any Elem. After an error buf is unspecified on the ranks
// other than root unless the call failed before moving data (see "After an
// error" in the package documentation); root's buf is only read.
//
// Small buffers go down a binomial tree (ceil(log2 Size) latencies), large
// ones along the ring's pipelined chain (Size-1 latencies, every link busy
// at once); the cost model chooses, Config.Algorithm "doubling" forces the
// tree and "ring" the chain.
func Broadcast[T Elem](ctx context.Context, c *Comm, buf []T, root int) error {
	algo := c.broadcastAlgorithm(len(buf) * kernel.Size[T]())
	sig := signature[T](kindBroadcast, 0, len(buf), root)
	sig.Op |= uint8(algo) << 4 // ranks that chose differently fail with ErrMismatch
	if err := c.begin(ctx, sig); err != nil {
		return err
	}
	if err := checkRoot(c, "Broadcast", root); err != nil {
		return c.end(err)
	}
	switch algo {
	case algoDoubling:
		return c.end(broadcastTree(c, buf, root))
	case algoHier:
		return c.end(hierBroadcast(c, buf, root))
	}
	lastRank := (root + c.size - 1) % c.size
	var ackFrom, ackTo link.Link
	if c.size > 1 {
		ackFrom, ackTo = c.links[lastRank], c.links[root] // nil at the ranks that do not use them
		if c.rank != root {
			ackFrom = nil
		}
		if c.rank != lastRank {
			ackTo = nil
		}
	}
	return c.end(ring.Broadcast(c.ring, buf, root, ackFrom, ackTo))
}

// Barrier returns once every rank has called it. Every rank calls it, in
// the same place among its calls as the others.
func Barrier(ctx context.Context, c *Comm) error {
	if err := c.begin(ctx, signature[uint8](kindBarrier, 0, 0, 0)); err != nil {
		return err
	}
	return c.end(c.dissemination())
}

// dissemination is the barrier of Hensgen, Finkel and Manber: in round k each
// rank signals rank+2^k and waits for rank-2^k, so after ceil(log2 Size)
// rounds every rank has heard, directly or not, from every other.
func (c *Comm) dissemination() error {
	for d := 1; d < c.size; d *= 2 {
		to, from := c.links[(c.rank+d)%c.size], c.links[(c.rank-d+c.size)%c.size]
		if err := from.Post(nil); err != nil {
			return err
		}
		t, err := to.Send(nil)
		if err != nil {
			return err
		}
		if err := from.Wait(); err != nil {
			return err
		}
		if err := to.Flush(t); err != nil {
			return err
		}
	}
	return nil
}

// checkAlias accepts a block buffer that is disjoint from the full one or is
// exactly block rank of it (the MPI_IN_PLACE convention); any other overlap
// would corrupt the result.
func checkAlias[T Elem](full, block []T, rank int, call, blockName, fullName string) error {
	if !kernel.Overlap(full, block) {
		return nil
	}
	m := len(block)
	if &full[rank*m] == &block[0] {
		return nil
	}
	return invalidf("%s: %s overlaps %s other than as its block %d", call, blockName, fullName, rank)
}
