package ring

import (
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/link"
)

// schedule is one rank's view of a ring operation over a vector of n elements.
//
// The operation is a sequence of transfer steps. Reduce-scatter has size-1 of
// them: at step t the rank sends chunk rank-t-1 and receives chunk rank-t-2,
// so that its last receive completes chunk rank. Allgather has size-1 more:
// at its step t the rank sends chunk rank-t and receives chunk rank-t-1.
// Chunks are cut into pieces; a round moves Depth pieces of every chunk
// through every step, and rounds repeat until the chunks are exhausted.
type schedule struct {
	rank, size int
	n, block   int // block > 0: equal blocks; 0: balanced chunks of n
	rs, ag     bool
	steps      int
	seg        int // elements per piece
	depth      int
	rounds     int
	outOff     int // index of out[0] in the vector (reduce-scatter output)
}

func newSchedule[T link.Elem](r *Ring, n, block int, rs, ag bool) schedule {
	s := schedule{rank: r.rank, size: r.size, n: n, block: block, rs: rs, ag: ag, depth: r.opt.Depth}
	if rs {
		s.steps += s.size - 1
	}
	if ag {
		s.steps += s.size - 1
	}
	if rs && !ag {
		s.outOff, _ = s.chunk(s.rank)
	}
	size := kernel.Size[T]()
	maxSeg := max(1, r.opt.SegmentBytes/size)
	minSeg := max(1, r.opt.MinSegmentBytes/size)
	longest := s.chunkLen(0) // chunk 0 is never shorter than another
	s.seg = min(maxSeg, max(minSeg, (longest+s.depth-1)/s.depth))
	perRound := s.seg * s.depth
	s.rounds = (longest + perRound - 1) / perRound
	return s
}

func mod(a, n int) int { return ((a % n) + n) % n }

// chunk returns the bounds of chunk c in the vector.
func (s *schedule) chunk(c int) (lo, hi int) {
	if s.block > 0 {
		return c * s.block, (c + 1) * s.block
	}
	q, r := s.n/s.size, s.n%s.size
	lo = c*q + min(c, r)
	hi = lo + q
	if c < r {
		hi++
	}
	return lo, hi
}

func (s *schedule) chunkLen(c int) int {
	lo, hi := s.chunk(c)
	return hi - lo
}

// piece returns the bounds of piece k of chunk c in round q; empty when the
// chunk is exhausted.
func (s *schedule) piece(c, q, k int) (lo, hi int) {
	clo, chi := s.chunk(c)
	lo = min(chi, clo+(q*s.depth+k)*s.seg)
	hi = min(chi, lo+s.seg)
	return lo, hi
}

// isRS reports whether step t belongs to the reduce-scatter.
func (s *schedule) isRS(t int) bool { return s.rs && t < s.size-1 }

// sendChunk and recvChunk name the chunks moved at step t.
func (s *schedule) sendChunk(t int) int {
	if s.isRS(t) {
		return mod(s.rank-t-1, s.size)
	}
	if s.rs {
		t -= s.size - 1
	}
	return mod(s.rank-t, s.size)
}

func (s *schedule) recvChunk(t int) int { return s.sendChunk(t + 1) }

// run executes the schedule: own is the input vector (n elements), out the
// output (the vector, or for reduce-scatter the rank's block).
func run[T link.Elem](r *Ring, sched schedule, own, out []T, red link.Reducer[T]) error {
	s := &sched
	if s.n == 0 {
		return r.exchangeEmpty()
	}
	r.scratch()
	// Only an in-place allreduce receives into a region it sent from at step
	// 0 (chunk rank-1); a pure allgather never receives into its own block.
	guarded := s.rs && s.ag && kernel.Overlap(own, out)
	x := runner[T]{r: r, s: sched, own: own, out: out, red: red, guarded: guarded}
	for i := range r.tickets {
		r.tickets[i] = 0
	}
	// The switch is written out here: a method value (x.do) or a call
	// through one moves x to the heap, an allocation per call.
	err := s.walk(true, func(m move, q, t, k int) error {
		switch m {
		case moveStartRound:
			return x.startRound(q)
		case movePost:
			return x.post(q, t, k)
		}
		return x.consume(q, t, k)
	})
	if err != nil {
		return err
	}
	return r.right.Flush(x.lastSend)
}

// move is one kind of thing a schedule run does with a piece.
type move uint8

const (
	moveStartRound move = iota // queue step 0 of round q: the rank's own pieces
	movePost                   // post the receive of piece k of step t of round q
	moveConsume                // complete piece k of step t of round q and pass it on
)

// walk calls do with the schedule's moves, in the order every rank follows
// them, until one fails. Step 0 of round q+1 is queued once every send of
// round q is (its last step has begun). With postAhead, receives run Depth
// pieces ahead: each piece consumed posts the same piece of the next step;
// without it, do posts its own receives (payloads of unknown length).
//
// A callback rather than an interface: do is a closure on the caller's
// stack, so a run allocates nothing.
func (s *schedule) walk(postAhead bool, do func(m move, q, t, k int) error) error {
	for q := 0; q < s.rounds; q++ {
		if q == 0 {
			if err := do(moveStartRound, 0, 0, 0); err != nil {
				return err
			}
			for k := 0; postAhead && k < s.depth; k++ {
				if err := do(movePost, 0, 0, k); err != nil {
					return err
				}
			}
		}
		for t := 0; t < s.steps; t++ {
			if t == s.steps-1 && q+1 < s.rounds {
				if err := do(moveStartRound, q+1, 0, 0); err != nil {
					return err
				}
			}
			for k := 0; k < s.depth; k++ {
				if err := do(moveConsume, q, t, k); err != nil {
					return err
				}
				if !postAhead {
					continue
				}
				nq, nt := q, t+1
				if nt == s.steps {
					nq, nt = q+1, 0
				}
				if nq < s.rounds {
					if err := do(movePost, nq, nt, k); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// runner holds the state of one schedule run.
type runner[T link.Elem] struct {
	r        *Ring
	s        schedule
	own, out []T
	red      link.Reducer[T]
	guarded  bool   // own and out share memory: allgather receives must wait for step-0 sends
	guard    uint64 // last step-0 send of the current round
	lastSend uint64
}

// startRound queues step 0 of round q: the rank's own pieces, sent as they
// are ("send", or for a pure allgather the gathered block).
func (x *runner[T]) startRound(q int) error {
	s := &x.s
	c := s.sendChunk(0)
	src := x.own
	if !s.rs {
		src = x.out
	}
	for k := 0; k < s.depth; k++ {
		lo, hi := s.piece(c, q, k)
		if lo == hi {
			continue
		}
		if err := x.send(src[lo:hi]); err != nil {
			return err
		}
	}
	x.guard = x.lastSend
	return nil
}

func (x *runner[T]) send(p []T) error {
	t, err := x.r.right.Send(kernel.Bytes(p))
	x.lastSend = t
	return err
}

// post asks for piece k of step t of round q: into a receive slot during
// reduce-scatter, straight into out during allgather.
func (x *runner[T]) post(q, t, k int) error {
	s := &x.s
	lo, hi := s.piece(s.recvChunk(t), q, k)
	if lo == hi {
		return nil
	}
	if s.isRS(t) {
		return x.r.left.Post(x.r.recvSlots[k][:(hi-lo)*kernel.Size[T]()])
	}
	if x.guarded {
		// The region was sent from at step 0 of this round; it must be on
		// the wire before it is overwritten.
		if err := x.r.right.Flush(x.guard); err != nil {
			return err
		}
	}
	return x.r.left.Post(kernel.Bytes(x.out[lo-s.outOff : hi-s.outOff]))
}

// consume completes piece k of step t of round q and forwards it.
func (x *runner[T]) consume(q, t, k int) error {
	s := &x.s
	c := s.recvChunk(t)
	lo, hi := s.piece(c, q, k)
	if lo == hi {
		return nil
	}
	if err := x.r.left.Wait(); err != nil {
		return err
	}
	last := t == s.steps-1
	switch {
	case s.isRS(t) && t < s.size-2:
		return x.recvReduceSend(t, k, lo, hi)
	case s.isRS(t):
		return x.recvReduceCopy(k, lo, hi, last)
	case !last:
		return x.send(x.out[lo-s.outOff : hi-s.outOff]) // recvCopySend: received in place
	}
	return nil // recv: the last allgather step only lands data
}

// recvReduceSend adds the rank's own piece to the partial sum from the left
// and queues the result for the right.
func (x *runner[T]) recvReduceSend(t, k, lo, hi int) error {
	slot := ((t+1)%2)*x.s.depth + k
	if err := x.r.right.Flush(x.r.tickets[slot]); err != nil {
		return err
	}
	n := hi - lo
	dst := kernel.FromBytes[T](x.r.sendSlots[slot][:n*kernel.Size[T]()])
	in := kernel.FromBytes[T](x.r.recvSlots[k][:n*kernel.Size[T]()])
	x.red.ReduceTo(dst, in, x.own[lo:hi])
	if err := x.send(dst); err != nil {
		return err
	}
	x.r.tickets[slot] = x.lastSend
	return nil
}

// recvReduceCopy completes the rank's own chunk into out and, in an allreduce,
// starts it around the ring (recvReduceCopySend).
func (x *runner[T]) recvReduceCopy(k, lo, hi int, last bool) error {
	n := hi - lo
	dst := x.out[lo-x.s.outOff : hi-x.s.outOff]
	in := kernel.FromBytes[T](x.r.recvSlots[k][:n*kernel.Size[T]()])
	x.red.ReduceTo(dst, x.own[lo:hi], in)
	if x.red.Div != nil {
		x.red.Div(dst, x.s.size)
	}
	if last {
		return nil
	}
	return x.send(dst)
}

// exchangeEmpty sends one empty frame to the right and receives one from the
// left, so that even an operation without data checks that the neighbours
// agree on what they are doing.
func (r *Ring) exchangeEmpty() error {
	if err := r.left.Post(nil); err != nil {
		return err
	}
	t, err := r.right.Send(nil)
	if err != nil {
		return err
	}
	if err := r.left.Wait(); err != nil {
		return err
	}
	return r.right.Flush(t)
}
