package doubling

import (
	"github.com/ringo-ml/ringo/internal/xfer"
	"github.com/ringo-ml/ringo/link"
)

// Rabenseifner reduces buf in place across size ranks by Rabenseifner's
// algorithm: a reduce-scatter by recursive halving, then an allgather by
// recursive doubling. It needs 2·log2(N) message latencies, like two
// recursive doublings, but moves and reduces only 2(N-1)/N and (N-1)/N of the
// vector, like the ring: the algorithm for vectors too large for recursive
// doubling and too small to amortise the ring's 2(N-1) latencies.
//
// The vector is cut into p2 blocks (p2 the largest power of two not above
// size), block b of buf[b·len/p2 ...] rounded so the first len%p2 blocks
// hold one element more. In the reduce-scatter, at distance d = p2/2, p2/4,
// ..., 1, every virtual rank v keeps the half of its current blocks on its
// side of bit d (the lower half if v&d == 0), sends the other half to v^d and
// reduces what v^d sends it into the kept half. After log2(p2) steps v holds
// block v reduced over all ranks; the allgather runs the same steps in the
// opposite order, exchanging whole ranges without reducing.
//
// Every rank ends with the same bits: each block is reduced on one rank only
// (always op(lower rank's value, higher rank's value)) and then copied.
//
// A size that is not a power of two is folded as in AllReduce: the even ranks
// below 2·(size-p2) hand their vectors to the odd rank above them first and
// get the result back at the end.
//
// links[p] connects to rank p (nil at rank itself); scratch holds at least
// len(buf) elements.
func Rabenseifner[T link.Elem](rank, size int, links []link.Link, buf, scratch []T, red link.Reducer[T]) error {
	if size == 1 {
		return nil
	}
	n := len(buf)
	scratch = scratch[:n]
	f := newFold(rank, size)
	p2, vrank, real := f.p2, f.vrank, f.real
	// off is where block b starts: the first n%p2 blocks are one longer.
	q, r := n/p2, n%p2
	off := func(b int) int { return b*q + min(b, r) }

	if out, err := foldIn(f, links, buf, scratch, red); out || err != nil {
		return err
	}

	// Reduce-scatter by recursive halving: [lo, hi) are the blocks this
	// rank is still responsible for.
	lo, hi := 0, p2
	for d := p2 / 2; d >= 1; d /= 2 {
		mid := lo + (hi-lo)/2
		keepLo, keepHi, sendLo, sendHi := lo, mid, mid, hi
		if vrank&d != 0 {
			keepLo, keepHi, sendLo, sendHi = mid, hi, lo, mid
		}
		partner := real(vrank ^ d)
		keep := buf[off(keepLo):off(keepHi)]
		in := scratch[:len(keep)]
		if err := xfer.SendRecv(links[partner], buf[off(sendLo):off(sendHi)], links[partner], in); err != nil {
			return err
		}
		if partner < rank {
			red.ReduceTo(keep, in, keep)
		} else {
			red.ReduceTo(keep, keep, in)
		}
		lo, hi = keepLo, keepHi
	}
	if red.Div != nil {
		red.Div(buf[off(lo):off(hi)], size) // each rank divides its own block once
	}

	// Allgather by recursive doubling: the ranges double back to the whole.
	for d := 1; d < p2; d *= 2 {
		partner := real(vrank ^ d)
		plo := lo ^ d // ranges are d blocks, aligned: the partner's is across bit d
		phi := plo + d
		if err := xfer.SendRecv(links[partner], buf[off(lo):off(hi)], links[partner], buf[off(plo):off(phi)]); err != nil {
			return err
		}
		lo, hi = min(lo, plo), max(hi, phi)
	}

	return foldOut(f, links, buf)
}
