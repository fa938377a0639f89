package ring

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestScheduleInvariants checks the arithmetic every ring operation rests
// on, for many vector lengths, world sizes and pipeline shapes.
func TestScheduleInvariants(t *testing.T) {
	opts := []Options{
		{SegmentBytes: 8, MinSegmentBytes: 8, Depth: 1},
		{SegmentBytes: 64, MinSegmentBytes: 8, Depth: 3},
		DefaultOptions,
	}
	for _, opt := range opts {
		for size := 1; size <= 9; size++ {
			for _, n := range []int{0, 1, 2, size - 1, size, size + 1, 17, 97, 1000, 65_537} {
				if n < 0 || n > 1000 && opt.SegmentBytes < 1024 {
					continue // tiny pieces of long vectors add time, not cases
				}
				for _, kind := range []string{"allreduce", "reducescatter", "allgather"} {
					name := fmt.Sprintf("%s/seg=%d/depth=%d/size=%d/n=%d", kind, opt.SegmentBytes, opt.Depth, size, n)
					if !t.Run(name, func(t *testing.T) { checkSchedule(t, kind, opt, size, n) }) {
						return
					}
				}
			}
		}
	}
}

func checkSchedule(t *testing.T, kind string, opt Options, size, n int) {
	block, rs, ag := 0, true, true
	switch kind {
	case "reducescatter":
		block, ag = n, false
		n *= size
	case "allgather":
		block, rs = n, false
		n *= size
	}
	for rank := range size {
		r := New(rank, size, nil, nil, opt)
		s := newSchedule[float32](r, n, block, rs, ag)

		// Chunks tile the vector in order; balanced chunks differ by at most one.
		next := 0
		for c := range size {
			lo, hi := s.chunk(c)
			require.Equal(t, next, lo)
			require.LessOrEqual(t, lo, hi)
			require.LessOrEqual(t, s.chunkLen(c), s.chunkLen(0), "chunk 0 is the longest")
			next = hi
		}
		require.Equal(t, n, next)

		// The pieces of every chunk, over all rounds, tile the chunk.
		require.LessOrEqual(t, s.seg*4, max(4, r.opt.SegmentBytes), "a piece fits a scratch slot")
		for c := range size {
			lo, hi := s.chunk(c)
			at := lo
			for q := range s.rounds {
				for k := range s.depth {
					plo, phi := s.piece(c, q, k)
					if plo == phi {
						continue
					}
					require.Equal(t, at, plo, "chunk %d round %d piece %d", c, q, k)
					at = phi
				}
			}
			require.Equal(t, hi, at, "chunk %d fully covered", c)
		}

		// What a rank sends at step t+1 is what it received at step t.
		for step := 0; step+1 < s.steps; step++ {
			require.Equal(t, s.recvChunk(step), s.sendChunk(step+1))
		}
		// The left neighbour sends exactly what this rank expects.
		left := newSchedule[float32](New((rank+size-1)%size, size, nil, nil, opt), n, block, rs, ag)
		for step := range s.steps {
			require.Equal(t, s.recvChunk(step), left.sendChunk(step), "step %d", step)
		}
		// Reduce-scatter ends on the rank's own chunk; allgather then brings
		// every other chunk exactly once.
		if rs && size > 1 {
			require.Equal(t, rank, s.recvChunk(size-2))
		}
		if ag && size > 1 {
			seen := map[int]bool{}
			first := 0
			if rs {
				first = size - 1
			}
			for step := first; step < s.steps; step++ {
				c := s.recvChunk(step)
				require.NotEqual(t, rank, c)
				require.False(t, seen[c], "chunk %d twice", c)
				seen[c] = true
			}
			require.Len(t, seen, size-1)
		}
	}
}
