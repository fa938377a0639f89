// Package tree runs the latency-optimal broadcast: a binomial tree, in which
// the ranks that have the data double every round, so that N ranks have it
// after ceil(log2 N) message latencies where the ring's chain needs N-1.
// It sends the whole vector on every edge, unpipelined, so it is for small
// vectors: for large ones the chain, which keeps every link busy at once,
// is faster.
//
// Like the rest of the schedules it sees its peers only through link.Link.
package tree

import (
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/internal/xfer"
	"github.com/ringo-ml/ringo/link"
)

// Broadcast copies root's buf into buf on every one of size ranks. links[p]
// connects to rank p (nil at rank itself).
//
// In relative numbering (rel = rank-root mod size) rank rel receives from
// rel minus its lowest set bit and sends to rel+2^k for every 2^k below that
// bit, largest subtree first.
//
// Every rank also sends its parent one empty frame ("joined"), at once, and
// waits for one from each of its children before it returns. The frames cost
// no latency (they travel while the data does), but they make every rank
// receive from every neighbour it has in the tree. That is what keeps a
// mismatch from passing unnoticed: if ranks disagree on the call (another
// root, count, type or algorithm), the ranks that agree with one another
// cannot all complete among themselves, since a tree that spans all ranks
// has an edge between them and the others, and the frame expected across
// it is refused for its signature (or, if none is sent, the receiver's
// probe is). With the data only, the root would receive nothing, and a
// rank that wrongly believed itself the root could return none the wiser.
func Broadcast[T link.Elem](rank, size, root int, links []link.Link, buf []T) error {
	if size == 1 {
		return nil
	}
	rel := (rank - root + size) % size
	// low is rel's lowest set bit (size rounded up to a power of two at the
	// root): rel's children are rel+low/2, rel+low/4, ..., rel+1, those below
	// size, largest subtree first.
	low := 1
	for low < size && rel&low == 0 {
		low <<= 1
	}
	var childArr [64]link.Link // on the stack: a call allocates nothing
	children := childArr[:0]
	for d := low / 2; d >= 1; d /= 2 {
		if rel+d < size {
			children = append(children, links[(rank+d)%size])
		}
	}
	var tickets [64]uint64

	for _, c := range children {
		if err := c.Post(nil); err != nil {
			return err
		}
	}
	var joined uint64
	var parent link.Link
	if rel != 0 {
		parent = links[(rank-low+size)%size]
		t, err := parent.Send(nil)
		if err != nil {
			return err
		}
		joined = t
	}

	// The data, piece by piece so that no frame exceeds xfer.MaxPiece: each
	// piece goes on to the children as soon as it is in.
	step := max(1, xfer.MaxPiece/kernel.Size[T]())
	for lo := 0; lo == 0 || lo < len(buf); lo += step {
		piece := kernel.Bytes(buf[lo:min(len(buf), lo+step)])
		if parent != nil {
			if err := parent.Post(piece); err != nil {
				return err
			}
			if err := parent.Wait(); err != nil {
				return err
			}
		}
		for i, c := range children {
			t, err := c.Send(piece)
			if err != nil {
				return err
			}
			tickets[i] = t
		}
		// Bound the frames in flight: one piece per child at a time (a
		// small vector is one piece anyway).
		for i, c := range children {
			if err := c.Flush(tickets[i]); err != nil {
				return err
			}
		}
	}

	if parent != nil {
		if err := parent.Flush(joined); err != nil {
			return err
		}
	}
	for _, c := range children {
		if err := c.Wait(); err != nil { // the child's "joined"
			return err
		}
	}
	return nil
}
