package collective

import (
	"context"

	"github.com/ringo-ml/ringo/internal/algo/direct"
	"github.com/ringo-ml/ringo/internal/kernel"
)

// AllGatherV is AllGather with a block length per rank (ragged data): every
// rank passes the same counts (len Size); rank p contributes counts[p]
// elements (its send) and recv receives the blocks of every rank in rank
// order (len = sum of counts). Counts of 0 are fine.
//
// T is any Elem. After an error recv is unspecified unless the call failed
// before moving data (see "After an error" in the package documentation);
// send is only read.
func AllGatherV[T Elem](ctx context.Context, c *Comm, send []T, counts []int, recv []T) error {
	total, err := sumCounts(c, "AllGatherV", "counts", counts)
	if err := c.begin(ctx, signature[T](kindAllGatherV, 0, total, 0)); err != nil {
		return err
	}
	switch {
	case err != nil:
	case len(send) != counts[c.rank]:
		err = invalidf("AllGatherV: len(send) = %d but counts[%d] = %d", len(send), c.rank, counts[c.rank])
	case len(recv) != total:
		err = invalidf("AllGatherV: len(recv) = %d but the counts add up to %d", len(recv), total)
	case kernel.Overlap(send, recv):
		err = invalidf("AllGatherV: send and recv overlap")
	}
	if err != nil {
		return c.end(err)
	}
	return c.end(direct.AllGatherV(c.rank, c.size, c.peers, send, counts, recv))
}

// AllToAllV is AllToAll with a block length per pair (sparse exchanges):
// send holds sendCounts[p] elements for rank p, in rank order, and recv
// receives recvCounts[p] elements from rank p. Rank r's sendCounts[p] must
// equal rank p's recvCounts[r] (a difference fails the call on both ranks).
//
// T is any Elem, the same on every rank. After an error recv is unspecified
// unless the call failed before moving data (see "After an error" in the
// package documentation); send is only read.
func AllToAllV[T Elem](ctx context.Context, c *Comm, send []T, sendCounts []int, recv []T, recvCounts []int) error {
	sendTotal, err := sumCounts(c, "AllToAllV", "sendCounts", sendCounts)
	recvTotal, rerr := sumCounts(c, "AllToAllV", "recvCounts", recvCounts)
	if err == nil {
		err = rerr
	}
	if err := c.begin(ctx, signature[T](kindAllToAllV, 0, 0, 0)); err != nil {
		return err
	}
	switch {
	case err != nil:
	case len(send) != sendTotal:
		err = invalidf("AllToAllV: len(send) = %d but sendCounts add up to %d", len(send), sendTotal)
	case len(recv) != recvTotal:
		err = invalidf("AllToAllV: len(recv) = %d but recvCounts add up to %d", len(recv), recvTotal)
	case kernel.Overlap(send, recv):
		err = invalidf("AllToAllV: send and recv overlap")
	}
	if err != nil {
		return c.end(err)
	}
	return c.end(direct.AllToAllV(c.rank, c.size, c.peers, send, sendCounts, recv, recvCounts))
}

// sumCounts checks a per-rank count list and returns its total.
func sumCounts(c *Comm, call, name string, counts []int) (int, error) {
	if len(counts) != c.size {
		return 0, invalidf("%s: len(%s) = %d, want one count per rank (%d)", call, name, len(counts), c.size)
	}
	total := 0
	for p, n := range counts {
		if n < 0 {
			return 0, invalidf("%s: %s[%d] = %d is negative", call, name, p, n)
		}
		total += n
	}
	return total, nil
}

// AllGatherVAsync is AllGatherV, returning at once.
func AllGatherVAsync[T Elem](ctx context.Context, c *Comm, send []T, counts []int, recv []T) *Work {
	return async(ctx, &asyncCall[T]{c: c, kind: asyncAllGatherV, send: send, sendCounts: counts, recv: recv})
}

// AllToAllVAsync is AllToAllV, returning at once.
func AllToAllVAsync[T Elem](ctx context.Context, c *Comm, send []T, sendCounts []int, recv []T, recvCounts []int) *Work {
	return async(ctx, &asyncCall[T]{c: c, kind: asyncAllToAllV, send: send, sendCounts: sendCounts, recv: recv, recvCounts: recvCounts})
}
