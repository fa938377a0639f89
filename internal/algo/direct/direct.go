// Package direct holds the collectives whose every block goes straight to
// the rank that wants it: gather and scatter (every rank to or from the
// root) and all-to-all (pairwise exchange: in round k each rank sends to
// rank+k and receives from rank-k, so every link carries one block each way
// and no rank is a hot spot).
package direct

import (
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/internal/xfer"
	"github.com/ringo-ml/ringo/link"
)

// Gather concatenates every rank's send, in rank order, into recv at root
// (size blocks of len(send)); recv is not used elsewhere.
func Gather[T link.Elem](rank, size, root int, links []link.Link, send, recv []T) error {
	m := len(send)
	return GatherBlocks(rank, root, links, send, recv, func(p int) (int, int) { return p * m, (p + 1) * m })
}

// GatherBlocks sends every rank's send to root, which puts rank p's into
// recv[block(p)]; len(send) must be the length of block(rank). The root
// receives from every rank at once when blocks fit a frame.
func GatherBlocks[T link.Elem](rank, root int, links []link.Link, send, recv []T, block func(p int) (lo, hi int)) error {
	if rank != root {
		return xfer.Send(links[root], send)
	}
	lo, hi := block(root)
	copy(recv[lo:hi], send)
	largest := 0
	for p := range links {
		lo, hi := block(p)
		largest = max(largest, hi-lo)
	}
	if largest*kernel.Size[T]() > xfer.MaxPiece {
		for p, l := range links {
			if p != root {
				lo, hi := block(p)
				if err := xfer.Recv(l, recv[lo:hi]); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for p, l := range links {
		if p != root {
			lo, hi := block(p)
			if err := l.Post(kernel.Bytes(recv[lo:hi])); err != nil {
				return err
			}
		}
	}
	for p, l := range links {
		if p != root {
			if err := l.Wait(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Scatter sends block p of root's send (size blocks of len(recv)) to rank p's
// recv; send is not used elsewhere.
func Scatter[T link.Elem](rank, size, root int, links []link.Link, send, recv []T) error {
	m := len(recv)
	if rank != root {
		return xfer.Recv(links[root], recv)
	}
	copy(recv, send[root*m:(root+1)*m])
	for p := range size {
		if p != root {
			if err := xfer.Send(links[p], send[p*m:(p+1)*m]); err != nil {
				return err
			}
		}
	}
	return nil
}

// AllToAll sends block p of send to rank p, which puts it in block rank of
// its recv. send and recv hold size blocks of the same length and must not
// overlap.
func AllToAll[T link.Elem](rank, size int, links []link.Link, send, recv []T) error {
	m := len(send) / size
	copy(recv[rank*m:(rank+1)*m], send[rank*m:(rank+1)*m])
	for k := 1; k < size; k++ {
		to, from := (rank+k)%size, (rank-k+size)%size
		if err := xfer.SendRecv(links[to], send[to*m:(to+1)*m], links[from], recv[from*m:(from+1)*m]); err != nil {
			return err
		}
	}
	return nil
}

// AllGatherV is AllGather with a block length per rank: recv is the
// concatenation of blocks of counts[0], counts[1], ... elements, and send is
// this rank's block.
func AllGatherV[T link.Elem](rank, size int, links []link.Link, send []T, counts []int, recv []T) error {
	from := walkFrom(counts, rank)
	lo, hi := from.block()
	copy(recv[lo:hi], send)
	for k := 1; k < size; k++ {
		to := (rank + k) % size
		from.prev() // rank-k
		lo, hi := from.block()
		if err := xfer.SendRecv(links[to], send, links[from.p], recv[lo:hi]); err != nil {
			return err
		}
	}
	return nil
}

// AllToAllV is AllToAll with a block length per pair: send holds
// sendCounts[p] elements for each rank p in turn, recv receives
// recvCounts[p] from each rank p in turn.
func AllToAllV[T link.Elem](rank, size int, links []link.Link, send []T, sendCounts []int, recv []T, recvCounts []int) error {
	to, from := walkFrom(sendCounts, rank), walkFrom(recvCounts, rank)
	slo, shi := to.block()
	rlo, rhi := from.block()
	copy(recv[rlo:rhi], send[slo:shi])
	for k := 1; k < size; k++ {
		to.next()   // rank+k
		from.prev() // rank-k
		slo, shi := to.block()
		rlo, rhi := from.block()
		if err := xfer.SendRecv(links[to.p], send[slo:shi], links[from.p], recv[rlo:rhi]); err != nil {
			return err
		}
	}
	return nil
}

// blockWalk steps through the blocks of a count list (block p is
// counts[p] elements, after those of the blocks before it) in the order
// the pairwise exchange visits them, rank+1, rank+2, ... (next) or rank-1,
// rank-2, ... (prev), wrapping around, keeping the current block's offset
// as it goes: the exchanges find every block in O(1) a step without a
// table of offsets, so a call allocates nothing.
type blockWalk struct {
	counts []int
	p      int // the current block
	lo     int // its offset
	total  int // the sum of the counts
}

func walkFrom(counts []int, p int) blockWalk {
	w := blockWalk{counts: counts, p: p}
	for q, n := range counts {
		if q < p {
			w.lo += n
		}
		w.total += n
	}
	return w
}

// block is the current block's [lo, hi).
func (w *blockWalk) block() (lo, hi int) { return w.lo, w.lo + w.counts[w.p] }

func (w *blockWalk) next() {
	w.lo += w.counts[w.p]
	if w.p++; w.p == len(w.counts) {
		w.p, w.lo = 0, 0
	}
}

func (w *blockWalk) prev() {
	if w.p == 0 {
		w.p, w.lo = len(w.counts), w.total
	}
	w.p--
	w.lo -= w.counts[w.p]
}
