// Package ring runs the ring schedules over links a caller supplies:
// reduce-scatter, allgather, allreduce as the one followed by the other (also
// on two counter-rotating rings, and with a wire codec), and a pipelined
// chain broadcast along the ring.
//
// A ring is one rank's place among size ranks: a link.Link from its left
// neighbour (rank-1) and one to its right neighbour (rank+1). Any
// implementation of link.Link will do: a transport.Link, or one of the
// caller's own. Every rank makes its ring and then makes the same calls in
// the same order, each on a goroutine (or process) of its own:
//
//	r := ring.New(rank, size, left, right, ring.Options{})
//	err := ring.AllReduce(r, grads, ring.Sum[float32]())
//
// Every rank ends with bitwise-identical values: each element is reduced on
// one rank only and copied from there to the others.
//
// The vector is cut into one chunk per rank, each chunk into pieces of at most
// Options.SegmentBytes. Pieces are processed in rounds of Options.Depth pieces
// per chunk: while the rank reduces piece k of a step, the reader of the left
// link is already receiving piece k+1, and the right link's sender is writing
// the pieces reduced before. Every rank runs the same schedule, so the order of
// frames on a link is known to both of its ends.
//
// The package sees its neighbours only through the link.Link interface: it
// never touches a socket and knows nothing of signatures or failures. A
// failed call leaves the ring unusable (receives may still be posted into
// the caller's buffer): the caller must stop the links before it reuses the
// buffer, as package collective does by failing its communicator.
package ring

import (
	"fmt"
	"unsafe"

	"github.com/ringo-ml/ringo/link"
)

// Options tune the pipeline.
type Options struct {
	// SegmentBytes is the largest piece sent in one frame.
	SegmentBytes int
	// MinSegmentBytes is the smallest piece worth its own frame; smaller
	// chunks travel whole.
	MinSegmentBytes int
	// Depth is how many pieces of a step are in flight at once.
	Depth int
}

// DefaultOptions are starting values, not tuned: a sweep of segment sizes
// 64 KiB..1 MiB and depths 2..8 over TCP loopback (2 ranks, 1 and 16 MiB,
// go test -bench on a loaded 2-CPU VM) showed no setting clearly better than
// the noise.
var DefaultOptions = Options{SegmentBytes: 256 << 10, MinSegmentBytes: 16 << 10, Depth: 4}

func (o Options) normalized() Options {
	d := DefaultOptions
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = d.SegmentBytes
	}
	if o.MinSegmentBytes <= 0 {
		o.MinSegmentBytes = d.MinSegmentBytes
	}
	if o.MinSegmentBytes > o.SegmentBytes {
		o.MinSegmentBytes = o.SegmentBytes
	}
	if o.Depth <= 0 {
		o.Depth = d.Depth
	}
	o.Depth = min(o.Depth, 16)
	o.SegmentBytes = (o.SegmentBytes + 7) &^ 7
	return o
}

// Ring is one rank's place in a ring, with the scratch space its schedules
// reuse from call to call. Its methods must not run concurrently.
type Ring struct {
	rank, size  int
	left, right link.Link
	opt         Options

	recvSlots [][]byte // Depth slots the left neighbour's partial sums land in
	sendSlots [][]byte // 2·Depth slots of reduced pieces waiting to be sent
	tickets   []uint64 // per send slot: the send that must finish before reuse
	// half is the *half[T] a bidirectional allreduce last ran on this
	// (reverse) ring, reused by the next call of the same element type.
	half any
}

// New returns the ring of rank among size ranks, receiving from left and
// sending to right (the same link when size is 2).
func New(rank, size int, left, right link.Link, opt Options) *Ring {
	return &Ring{rank: rank, size: size, left: left, right: right, opt: opt.normalized()}
}

func (r *Ring) scratch() {
	if r.recvSlots != nil {
		return
	}
	d, seg := r.opt.Depth, r.opt.SegmentBytes
	words := make([]uint64, 3*d*seg/8) // uint64 backing keeps every slot 8-byte aligned
	all := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), 3*d*seg)
	r.recvSlots = make([][]byte, d)
	r.sendSlots = make([][]byte, 2*d)
	r.tickets = make([]uint64, 2*d)
	for i := range r.recvSlots {
		r.recvSlots[i] = all[i*seg : (i+1)*seg : (i+1)*seg]
	}
	for i := range r.sendSlots {
		off := (d + i) * seg
		r.sendSlots[i] = all[off : off+seg : off+seg]
	}
}

// AllReduce reduces buf across the ring in place: reduce-scatter, then
// allgather. Every rank ends with bitwise-identical values, because each
// chunk is reduced on one rank only and then copied around.
func AllReduce[T link.Elem](r *Ring, buf []T, red link.Reducer[T]) error {
	if r.size == 1 {
		return nil
	}
	s := newSchedule[T](r, len(buf), 0, true, true)
	return run(r, s, buf, buf, red)
}

// ReduceScatter reduces send (size blocks of len(recv)) and leaves block rank
// of the result in recv. recv may be exactly send's block rank.
func ReduceScatter[T link.Elem](r *Ring, send, recv []T, red link.Reducer[T]) error {
	m := len(recv)
	if len(send) != r.size*m {
		return fmt.Errorf("ring: reduce-scatter of %d elements into %d-element blocks on %d ranks", len(send), m, r.size)
	}
	if r.size == 1 {
		copy(recv, send)
		return nil
	}
	s := newSchedule[T](r, len(send), m, true, false)
	return run(r, s, send, recv, red)
}

// AllGather fills recv (size blocks of len(send)) with every rank's send, in
// rank order. send may be exactly recv's block rank.
func AllGather[T link.Elem](r *Ring, send, recv []T) error {
	m := len(send)
	if len(recv) != r.size*m {
		return fmt.Errorf("ring: allgather of %d-element blocks into %d elements on %d ranks", m, len(recv), r.size)
	}
	// When send is already in place (the sharded training APIs gather the
	// shard they updated in its block) this copy costs nothing: the
	// compiler lowers copy to a memmove guarded by "if dst != src".
	copy(recv[r.rank*m:(r.rank+1)*m], send)
	if r.size == 1 {
		return nil
	}
	s := newSchedule[T](r, len(recv), m, false, true)
	return run(r, s, recv, recv, link.Reducer[T]{})
}
