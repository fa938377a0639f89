package ring

import (
	"errors"
	"fmt"

	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/link"
)

// Reversed returns the ring that runs the other way over the same links:
// it receives from r's right neighbour and sends to its left. Its schedules
// use each link in the direction r leaves idle.
//
// Why the positions are right: a schedule needs only that the ring positions
// are a permutation of 0..size-1 and that the rank at position p receives
// from position p-1 and sends to position p+1 (mod size). The reversed ring
// puts rank r at p(r) = (size-r) mod size, a permutation (negation mod size
// is its own inverse; rank 0 stays at 0). Rank r receives from r+1, whose
// position is (size-r-1) mod size = p(r)-1, and sends to r-1, whose position
// is (size-r+1) mod size = p(r)+1. So every rank's predecessor and successor
// agree, and each link carries this ring's frames against r's direction.
//
// The position is the reversed ring's rank: it names the chunks this rank
// reduces, not the rank in the communicator. With two ranks left and right
// are one link, whose directions r already uses both of; the pair is then
// not run concurrently (see AllReduceBidirectional).
func (r *Ring) Reversed() *Ring {
	return New((r.size-r.rank)%r.size, r.size, r.right, r.left, r.opt)
}

// interrupter is a Link whose blocked calls another goroutine can end
// (transport.Link is one): calls of the current operation return an error
// wrapping cause until the link's next operation begins.
type interrupter interface {
	Interrupt(cause error)
}

// errOtherHalf is the cause a half of a bidirectional allreduce is
// interrupted with: the error worth returning is the other half's.
var errOtherHalf = errors.New("ring: the other half of the bidirectional allreduce failed")

// AllReduceBidirectional reduces buf in place over two counter-rotating
// rings, fwd and its Reversed twin rev, each carrying half of the vector:
// the first half runs over fwd on the calling goroutine, the second over rev
// on a goroutine of its own. fwd sends on the send side of its right link
// and receives on the receive side of its left; rev uses the other side of
// each, so every link carries data both ways and the two halves never use
// one side of a link at once. The links must allow that (see
// transport.Link).
//
// Every rank ends with bitwise-identical values: each element is reduced on
// one rank only, the owner of its chunk in its half's ring, and copied from
// there.
//
// If either half fails, the other is woken through the links' Interrupt (a
// failed communicator wakes both anyway, but a timeout, say, reaches only
// the half that happened to take it) and the call returns once both halves
// have stopped, with the error that did not come from the interruption.
// Links that cannot be interrupted leave the other half to its own
// timeout. As after any failed schedule, receives may still be posted into
// buf: the caller fails the communicator and quiesces the links first.
//
// With fewer than three ranks, or a vector too small to split (see
// bidirSplit), it is AllReduce over fwd.
//
// Cost: a goroutine is started per call for the second half and ends with
// it: about a microsecond, against milliseconds for any vector worth
// splitting. It allocates nothing in steady state (see halfWorker); no
// goroutine outlives the call, so nothing needs closing with the rings.
func AllReduceBidirectional[T link.Elem](fwd, rev *Ring, buf []T, red link.Reducer[T]) error {
	mid := bidirSplit(fwd, len(buf), kernel.Size[T]())
	if mid == 0 {
		return AllReduce(fwd, buf, red)
	}
	if rev == nil || rev.size != fwd.size || rev.rank != (fwd.size-fwd.rank)%fwd.size {
		return fmt.Errorf("ring: bidirectional allreduce needs fwd.Reversed() as its reverse ring")
	}
	h, _ := rev.half.(*half[T]) // the last call's, if it had the same type
	if h == nil {
		h = &half[T]{done: make(chan error, 1)}
		rev.half = h
	}
	h.r, h.buf, h.red = rev, buf[mid:], red
	go halfWorker()
	halves <- h
	err := AllReduce(fwd, buf[:mid], red)
	if err != nil {
		interrupt(fwd)
	}
	revErr := <-h.done         // the second half must stop before buf goes back to the caller
	*h = half[T]{done: h.done} // drop the references to the caller's buffer
	switch {
	case err != nil && !errors.Is(err, errOtherHalf):
		return err
	case revErr != nil && !errors.Is(revErr, errOtherHalf):
		return revErr
	case err != nil:
		return err
	}
	return revErr
}

// half is the second half of a bidirectional allreduce, run by a
// halfWorker. The reverse ring keeps it (Ring.half) for the next call, with
// its done channel.
type half[T link.Elem] struct {
	r    *Ring
	buf  []T
	red  link.Reducer[T]
	done chan error
}

func (h *half[T]) run() {
	err := AllReduce(h.r, h.buf, h.red)
	if err != nil {
		interrupt(h.r) // wake the first half
	}
	h.done <- err
}

// halves hands each halfWorker the half it runs: a rendezvous only, it holds
// nothing between calls. Every call starts one
// worker and sends one half, so each worker runs exactly one (which one does
// not matter: a half carries everything it needs).
var halves = make(chan interface{ run() })

// halfWorker runs one half. It takes its work from a channel, not as an
// argument, because a go statement with arguments or a closure allocates
// and one that calls a plain function does not.
func halfWorker() { (<-halves).run() }

// bidirSplit returns the index where the bidirectional allreduce of n
// elements of esize bytes on r's ring splits the vector, or 0 if it should
// not split.
//
// It splits only with three ranks or more: with two, the one-way ring
// already sends both ways over the only link, and the two rings would need
// the same side of it at once. It splits only if each half
// gives every rank a chunk of at least MinSegmentBytes: below that the ring
// moves single small frames, its time is latency, and a second ring only
// doubles the frames. The split is the middle rounded down to a multiple of
// 8 bytes, so that the second half's pieces are as aligned as the first's
// (the vector kernels run best on aligned data).
func bidirSplit(r *Ring, n, esize int) int {
	if r.size < 3 || n*esize < 2*r.size*r.opt.MinSegmentBytes {
		return 0
	}
	align := max(1, 8/esize)
	mid := n / 2 / align * align
	if mid == 0 || mid == n {
		return 0
	}
	return mid
}

// interrupt interrupts the operation on r's links, so that the other half,
// which uses the same two links, stops waiting.
func interrupt(r *Ring) {
	for _, l := range [2]link.Link{r.left, r.right} {
		if i, ok := l.(interrupter); ok {
			i.Interrupt(errOtherHalf)
		}
	}
}
