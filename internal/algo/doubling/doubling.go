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
//
// The package also holds Rabenseifner's algorithm (rabenseifner.go), the
// same exchanges on halving and doubling ranges of the vector instead of the
// whole of it: the ring's bytes in 2·log2(N) latencies, for mid-size vectors.
package doubling

import (
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/internal/xfer"
	"github.com/ringo-ml/ringo/link"
)

// ScratchLen is how many elements of scratch AllReduce wants for n: twice n
// for a vector that fits one frame (so that no round waits for its own send
// to be written, see exchangeRounds), n otherwise.
func ScratchLen[T link.Elem](n int) int {
	if n*kernel.Size[T]() <= xfer.MaxPiece {
		return 2 * n
	}
	return n
}

// AllReduce reduces buf in place across size ranks. links[p] connects to
// rank p (nil at rank itself); scratch holds at least len(buf) elements,
// ScratchLen(len(buf)) for the fastest schedule.
func AllReduce[T link.Elem](rank, size int, links []link.Link, buf, scratch []T, red link.Reducer[T]) error {
	if size == 1 {
		return nil
	}
	n := len(buf)
	f := newFold(rank, size)
	if out, err := foldIn(f, links, buf, scratch, red); out || err != nil {
		return err
	}

	var err error
	if n*kernel.Size[T]() <= xfer.MaxPiece && len(scratch) >= 2*n {
		err = exchangeRounds(f, links, buf, scratch[:n], scratch[n:2*n], red)
	} else {
		err = exchangeWhole(f, links, buf, scratch[:n], red)
	}
	if err != nil {
		return err
	}
	if red.Div != nil {
		red.Div(buf, size)
	}
	return foldOut(f, links, buf)
}

// exchangeWhole runs the rounds for a vector of any length: each round sends
// buf, receives into scratch and reduces into buf, so it must wait for its
// send to be written before it reduces.
func exchangeWhole[T link.Elem](f fold, links []link.Link, buf, scratch []T, red link.Reducer[T]) error {
	for mask := 1; mask < f.p2; mask <<= 1 {
		partner := f.real(f.vrank ^ mask)
		if err := xfer.Exchange(links[partner], buf, scratch); err != nil {
			return err
		}
		if partner < f.rank {
			red.ReduceTo(buf, scratch, buf)
		} else {
			red.ReduceTo(buf, buf, scratch)
		}
	}
	return nil
}

// exchangeRounds runs the rounds for a vector of one frame, latency-bound:
// three buffers take turns, so that a round sends the one it has just
// reduced into, receives into the one sent two rounds before and never
// waits for its own send to be written (the wait costs a wake-up, a large
// part of a round's time for a small vector). Only before reusing a buffer
// does it check that buffer's send is done (long since, in practice), and
// all sends before it returns. The result is copied into buf at the end.
func exchangeRounds[T link.Elem](f fold, links []link.Link, buf, a, b []T, red link.Reducer[T]) error {
	bufs := [3][]T{buf, a, b}
	var sentOn [3]link.Link // the link each buffer's pending send went on
	var tickets [3]uint64
	flush := func(i int) error {
		if sentOn[i] == nil {
			return nil
		}
		err := sentOn[i].Flush(tickets[i])
		sentOn[i] = nil
		return err
	}
	cur := 0 // the buffer holding this rank's partial result
	for mask := 1; mask < f.p2; mask <<= 1 {
		in := (cur + 1) % 3 // sent two rounds ago, if ever
		if err := flush(in); err != nil {
			return err
		}
		partner := f.real(f.vrank ^ mask)
		link := links[partner]
		if err := link.Post(kernel.Bytes(bufs[in])); err != nil {
			return err
		}
		t, err := link.Send(kernel.Bytes(bufs[cur]))
		if err != nil {
			return err
		}
		sentOn[cur], tickets[cur] = link, t
		if err := link.Wait(); err != nil {
			return err
		}
		if partner < f.rank {
			red.ReduceTo(bufs[in], bufs[in], bufs[cur])
		} else {
			red.ReduceTo(bufs[in], bufs[cur], bufs[in])
		}
		cur = in
	}
	for i := range bufs {
		if err := flush(i); err != nil {
			return err
		}
	}
	if cur != 0 {
		copy(buf, bufs[cur])
	}
	return nil
}
