// Package doubling is the latency-optimal AllReduce for small vectors:
// recursive doubling. In round k every rank exchanges its whole partial
// result with the rank whose (virtual) number differs in bit k and combines
// the two, so after log2(N) rounds every rank holds the reduction. Where the
// ring needs 2(N-1) message latencies, this needs log2(N) (two more when N
// is not a power of two); it moves N/2 times more bytes, which is why it is
// for small vectors only.
//
// Every rank ends with the same bits: the two partners of a round always
// combine op(value of the lower rank, value of the higher rank), in that
// order, so both compute the same function of the same operands.
//
// Non-powers of two (Rabenseifner's fold): with p2 the largest power of two
// not above N and rem = N-p2, each even rank below 2·rem first hands its
// vector to the odd rank above it and sits out; the odd rank stands in for
// both, and gets the final result back to its partner at the end.
package doubling

import (
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/internal/xfer"
	"github.com/ringo-ml/ringo/ring"
)

// AllReduce reduces buf in place across size ranks. links[p] connects to
// rank p (nil at rank itself); scratch holds at least len(buf) elements.
func AllReduce[T kernel.Elem](rank, size int, links []ring.Link, buf, scratch []T, red ring.Reducer[T]) error {
	if size == 1 {
		return nil
	}
	scratch = scratch[:len(buf)]
	p2 := 1
	for p2*2 <= size {
		p2 *= 2
	}
	rem := size - p2
	real := func(v int) int { // the rank standing for virtual rank v
		if v < rem {
			return 2*v + 1
		}
		return v + rem
	}

	vrank := rank - rem
	if rank < 2*rem {
		if rank%2 == 0 {
			// Folded out: hand the vector over, get the result back.
			if err := xfer.Send(links[rank+1], buf); err != nil {
				return err
			}
			return xfer.Recv(links[rank+1], buf)
		}
		if err := xfer.Recv(links[rank-1], scratch); err != nil {
			return err
		}
		red.Kernel.ReduceTo(buf, scratch, buf) // the lower rank's value first
		vrank = rank / 2
	}

	for mask := 1; mask < p2; mask <<= 1 {
		partner := real(vrank ^ mask)
		if err := xfer.Exchange(links[partner], buf, scratch); err != nil {
			return err
		}
		if partner < rank {
			red.Kernel.ReduceTo(buf, scratch, buf)
		} else {
			red.Kernel.ReduceTo(buf, buf, scratch)
		}
	}
	if red.Div != nil {
		red.Div(buf, size)
	}
	if rank < 2*rem {
		return xfer.Send(links[rank-1], buf)
	}
	return nil
}
