package collective

import (
	"context"

	"github.com/ringo-ml/ringo/internal/algo/direct"
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/ring"
)

// Reduce reduces send element-wise across all ranks into recv at root
// (len(recv) = len(send) there; recv is not used on other ranks and may be
// nil). send is never modified.
//
// Every rank passes the same root, the same op and a send of the same
// length. T is any Elem; op is Sum, Prod, Min or Max, or Avg for float32
// and float64. After an error root's recv is unspecified unless the call
// failed before moving data (see "After an error" in the package
// documentation).
//
// Small vectors go by the AllReduce algorithm on a copy (latency rules
// there); large ones by a ring reduce-scatter and a gather of the reduced
// chunks at the root, which moves half the bytes of an AllReduce.
func Reduce[T Elem](ctx context.Context, c *Comm, send, recv []T, op Op, root int) error {
	red, err := reducer[T](op)
	algo := c.allReduceAlgorithm(len(send) * kernel.Size[T]())
	sig := signature[T](kindReduce, op, len(send), root)
	sig.Op |= uint8(algo) << 4
	if err := c.begin(ctx, sig); err != nil {
		return err
	}
	if err == nil {
		err = checkRoot(c, "Reduce", root)
	}
	if err == nil && c.rank == root && len(recv) != len(send) {
		err = invalidf("Reduce at the root needs len(recv) = len(send) = %d, got %d", len(send), len(recv))
	}
	if err != nil {
		return c.end(err)
	}
	work := grow[T](&c.work, len(send))
	copy(work, send)
	if algo == algoDoubling || c.size == 1 {
		if err := allReduce(c, algo, work, red); err != nil {
			return c.end(err)
		}
		if c.rank == root {
			copy(recv, work)
		}
		return c.end(nil)
	}
	if err := ring.ReduceScatterChunks(c.ring, work, red); err != nil {
		return c.end(err)
	}
	n := len(send)
	lo, hi := ring.ChunkBounds(n, c.size, c.rank)
	return c.end(direct.GatherBlocks(c.rank, root, c.peers, work[lo:hi], recv, func(p int) (int, int) {
		return ring.ChunkBounds(n, c.size, p)
	}))
}

// Gather concatenates every rank's send, in rank order, into recv at root:
// len(recv) = Size·len(send) there; recv is not used on other ranks.
//
// Every rank passes the same root and a send of the same length; T is any
// Elem. After an error root's recv is unspecified unless the call failed
// before moving data (see "After an error" in the package documentation);
// send is only read.
func Gather[T Elem](ctx context.Context, c *Comm, send, recv []T, root int) error {
	if err := c.begin(ctx, signature[T](kindGather, 0, len(send), root)); err != nil {
		return err
	}
	err := checkRoot(c, "Gather", root)
	if err == nil && c.rank == root {
		if len(recv) != c.size*len(send) {
			err = invalidf("Gather at the root needs len(recv) = Size·len(send) = %d·%d, got %d", c.size, len(send), len(recv))
		} else {
			err = checkAlias(recv, send, c.rank, "Gather", "send", "recv")
		}
	}
	if err != nil {
		return c.end(err)
	}
	return c.end(direct.Gather(c.rank, c.size, root, c.peers, send, recv))
}

// Scatter sends block p of root's send (Size blocks of len(recv)) to rank p's
// recv; send is not used on other ranks.
//
// Every rank passes the same root and a recv of the same length; T is any
// Elem. After an error recv is unspecified unless the call failed before
// moving data (see "After an error" in the package documentation); root's
// send is only read.
func Scatter[T Elem](ctx context.Context, c *Comm, send, recv []T, root int) error {
	if err := c.begin(ctx, signature[T](kindScatter, 0, len(recv), root)); err != nil {
		return err
	}
	err := checkRoot(c, "Scatter", root)
	if err == nil && c.rank == root {
		if len(send) != c.size*len(recv) {
			err = invalidf("Scatter at the root needs len(send) = Size·len(recv) = %d·%d, got %d", c.size, len(recv), len(send))
		} else {
			err = checkAlias(send, recv, c.rank, "Scatter", "recv", "send")
		}
	}
	if err != nil {
		return c.end(err)
	}
	return c.end(direct.Scatter(c.rank, c.size, root, c.peers, send, recv))
}

// AllToAll sends block p of send to rank p, which receives it as block Rank
// of its recv: send and recv hold Size blocks each, of the same length, and
// must not overlap.
//
// Every rank passes buffers of the same length; T is any Elem. After an
// error recv is unspecified unless the call failed before moving data (see
// "After an error" in the package documentation); send is only read.
func AllToAll[T Elem](ctx context.Context, c *Comm, send, recv []T) error {
	m := len(send) / c.size
	if err := c.begin(ctx, signature[T](kindAllToAll, 0, m, 0)); err != nil {
		return err
	}
	var err error
	switch {
	case len(send) != c.size*m || len(recv) != len(send):
		err = invalidf("AllToAll needs len(send) = len(recv) = Size·block, got %d and %d for %d ranks", len(send), len(recv), c.size)
	case kernel.Overlap(send, recv):
		err = invalidf("AllToAll: send and recv overlap")
	}
	if err != nil {
		return c.end(err)
	}
	return c.end(direct.AllToAll(c.rank, c.size, c.peers, send, recv))
}

func checkRoot(c *Comm, call string, root int) error {
	if root < 0 || root >= c.size {
		return invalidf("%s root %d is not a rank of a communicator of %d", call, root, c.size)
	}
	return nil
}
