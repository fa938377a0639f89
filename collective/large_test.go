package collective_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/kernel"
)

// The collectives that send a block as one message cut a block larger than
// a frame (4 MiB) into pieces. These tests give them blocks of a piece and a
// few elements more, beside small and empty ones, on 2 and 3 ranks.

// bigBlock is a block of int32 just over one 4 MiB piece: two pieces, the
// second of 3 elements.
const bigBlock = 4<<20/4 + 3

// tagged is element i of the block rank from sends to rank to: every
// (sender, receiver, element) is its own value, so a block or a piece that
// lands in the wrong place cannot go unseen.
func tagged(from, to, i int) int32 { return int32(from<<24 | to<<21 | i) }

func taggedBlock(from, to, n int) []int32 {
	b := make([]int32, n)
	for i := range b {
		b[i] = tagged(from, to, i)
	}
	return b
}

// requireSameElems compares without rendering megabytes on failure.
func requireSameElems[T collective.Elem](t *testing.T, want, got []T, format string, args ...any) {
	t.Helper()
	require.Equal(t, len(want), len(got), fmt.Sprintf(format, args...))
	if string(kernel.Bytes(want)) == string(kernel.Bytes(got)) {
		return
	}
	for i := range want {
		if string(kernel.Bytes(want[i:i+1])) != string(kernel.Bytes(got[i:i+1])) {
			require.Failf(t, "elements differ", "%s: element %d of %d is %v, want %v", fmt.Sprintf(format, args...), i, len(want), got[i], want[i])
		}
	}
}

func TestGatherAndScatterOfBlocksOverAPiece(t *testing.T) {
	for _, n := range []int{2, 3} {
		comms := local(t, n, collective.Config{})
		root := n - 1
		t.Run(fmt.Sprintf("gather/n=%d", n), func(t *testing.T) {
			gathered := make([]int32, n*bigBlock)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				var recv []int32
				if r == root {
					recv = gathered
				}
				return collective.Gather(ctx, c, taggedBlock(r, root, bigBlock), recv, root)
			}))
			for p := range n {
				requireSameElems(t, taggedBlock(p, root, bigBlock), gathered[p*bigBlock:(p+1)*bigBlock], "block of rank %d", p)
			}
		})
		t.Run(fmt.Sprintf("scatter/n=%d", n), func(t *testing.T) {
			var whole []int32
			for p := range n {
				whole = append(whole, taggedBlock(root, p, bigBlock)...)
			}
			got := make([][]int32, n)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				got[r] = make([]int32, bigBlock)
				var send []int32
				if r == root {
					send = whole
				}
				return collective.Scatter(ctx, c, send, got[r], root)
			}))
			for p := range n {
				requireSameElems(t, taggedBlock(root, p, bigBlock), got[p], "rank %d", p)
			}
		})
	}
}

func TestAllToAllOfBlocksOverAPiece(t *testing.T) {
	for _, n := range []int{2, 3} {
		comms := local(t, n, collective.Config{})
		recvs := make([][]int32, n)
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			var send []int32
			for q := range n {
				send = append(send, taggedBlock(r, q, bigBlock)...)
			}
			recvs[r] = make([]int32, n*bigBlock)
			return collective.AllToAll(ctx, c, send, recvs[r])
		}))
		for r := range n {
			for p := range n {
				requireSameElems(t, taggedBlock(p, r, bigBlock), recvs[r][p*bigBlock:(p+1)*bigBlock], "n=%d rank %d from %d", n, r, p)
			}
		}
	}
}

// The ragged collectives with one block over a piece among small and empty
// ones: the exchanges of a round then have different numbers of pieces in
// each direction.
func TestVCollectivesWithBlocksOverAPiece(t *testing.T) {
	for _, n := range []int{2, 3} {
		comms := local(t, n, collective.Config{})
		// count(p, q): rank p's block for q. Rank 0 sends a big block to
		// the last rank, others little or nothing.
		count := func(p, q int) int {
			switch {
			case p == 0 && q == n-1:
				return bigBlock
			case p == q:
				return 5
			case (p+q)%2 == 1:
				return 0
			}
			return 1
		}
		t.Run(fmt.Sprintf("allgatherv/n=%d", n), func(t *testing.T) {
			counts := make([]int, n)
			total := 0
			for p := range n {
				counts[p] = count(p, n-1)
				total += counts[p]
			}
			recvs := make([][]int32, n)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				recvs[r] = make([]int32, total)
				return collective.AllGatherV(ctx, c, taggedBlock(r, 7, counts[r]), counts, recvs[r])
			}))
			for r := range n {
				off := 0
				for p := range n {
					requireSameElems(t, taggedBlock(p, 7, counts[p]), recvs[r][off:off+counts[p]], "rank %d block %d", r, p)
					off += counts[p]
				}
			}
		})
		t.Run(fmt.Sprintf("alltoallv/n=%d", n), func(t *testing.T) {
			recvs := make([][]int32, n)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				var send []int32
				sendCounts, recvCounts := make([]int, n), make([]int, n)
				total := 0
				for q := range n {
					send = append(send, taggedBlock(r, q, count(r, q))...)
					sendCounts[q], recvCounts[q] = count(r, q), count(q, r)
					total += recvCounts[q]
				}
				recvs[r] = make([]int32, total)
				return collective.AllToAllV(ctx, c, send, sendCounts, recvs[r], recvCounts)
			}))
			for r := range n {
				off := 0
				for p := range n {
					requireSameElems(t, taggedBlock(p, r, count(p, r)), recvs[r][off:off+count(p, r)], "rank %d from %d", r, p)
					off += count(p, r)
				}
			}
		})
	}
}

// A Reduce large enough that each rank's reduced chunk, gathered at the
// root, is over a piece: the gather's path for large blocks.
func TestReduceWithChunksOverAPiece(t *testing.T) {
	for _, n := range []int{2, 3} {
		comms := local(t, n, collective.Config{Algorithm: "ring"})
		count := n*(4<<20/4) + 2*n + 1 // chunks of a piece and 2 or 3 elements
		root := 1
		sends, kept := make([][]float32, n), make([][]float32, n)
		for r := range n {
			sends[r] = inputs[float32](r, count, collective.Sum)
			kept[r] = slices.Clone(sends[r])
		}
		recv := make([]float32, count)
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			var out []float32
			if r == root {
				out = recv
			}
			return collective.Reduce(ctx, c, sends[r], out, collective.Sum, root)
		}))
		want := make([]float32, count)
		for i := range want {
			var sum float64 // exact: the inputs are small integers
			for r := range n {
				sum += float64(kept[r][i])
			}
			want[i] = float32(sum)
		}
		requireSameElems(t, want, recv, "n=%d", n)
		for r := range n {
			requireSameElems(t, kept[r], sends[r], "Reduce changed send of rank %d", r)
		}
	}
}
