package ring

import "github.com/ringo-ml/ringo/internal/kernel"

// Reversed returns the ring that runs the other way over the same links:
// it receives from r's right neighbour and sends to its left. Its schedules
// use each link in the direction r leaves idle.
func (r *Ring) Reversed() *Ring {
	return New((r.size-r.rank)%r.size, r.size, r.right, r.left, r.opt)
}

// AllReduceBidirectional reduces buf in place over two counter-rotating
// rings, fwd and its Reversed twin, each carrying half of the vector.
//
// TODO(bidir): run both halves concurrently; for now it is the one-way ring.
func AllReduceBidirectional[T kernel.Elem](fwd, rev *Ring, buf []T, red Reducer[T]) error {
	_ = rev
	return AllReduce(fwd, buf, red)
}
