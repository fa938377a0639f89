package ring

import (
	"github.com/ringo-ml/ringo/link"
)

// ChunkBounds returns chunk c of a vector of n elements cut, as the ring
// schedules cut it, into size balanced chunks.
func ChunkBounds(n, size, c int) (lo, hi int) {
	s := schedule{n: n, size: size}
	return s.chunk(c)
}

// ReduceScatterChunks reduces buf across the ring in place, leaving the
// fully reduced chunk ChunkBounds(len(buf), size, rank) on this rank; the
// rest of buf holds partial results. Unlike ReduceScatter, the chunks
// need not be equal, so any length works (Reduce gathers them at a root).
func ReduceScatterChunks[T link.Elem](r *Ring, buf []T, red link.Reducer[T]) error {
	if r.size == 1 {
		return nil
	}
	s := newSchedule[T](r, len(buf), 0, true, false)
	lo, hi := s.chunk(r.rank)
	return run(r, s, buf, buf[lo:hi], red)
}

// AllGatherChunks completes buf, of which this rank holds chunk
// ChunkBounds(len(buf), size, rank), with every other rank's chunk: the
// second half of AllReduce on its own, for any length. After
// ReduceScatterChunks on every rank it completes an AllReduce.
func AllGatherChunks[T link.Elem](r *Ring, buf []T) error {
	if r.size == 1 {
		return nil
	}
	s := newSchedule[T](r, len(buf), 0, false, true)
	return run(r, s, buf, buf, link.Reducer[T]{})
}
