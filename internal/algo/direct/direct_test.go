package direct

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/linktest"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/internal/xfer"
)

// Each collective runs on every rank of an in-memory mesh (1 to 5 ranks,
// every root), over blocks of odd lengths, empty ones, and blocks of a frame
// and a few bytes more (which travel in pieces). Every element names its
// sender, its receiver and its place, so a block or piece delivered to the
// wrong place shows; and no frame may be left unread on any link.

// elem is element i of what rank from sends rank to.
func elem(from, to, i int) int32 { return int32(from<<24 | to<<20 | i) }

func block(from, to, n int) []int32 {
	b := make([]int32, n)
	for i := range b {
		b[i] = elem(from, to, i)
	}
	return b
}

// bigBytes is a block of bytes one frame and 5 bytes long: two pieces.
const bigBytes = xfer.MaxPiece + 5

func byteBlock(from, to, n int) []uint8 {
	b := make([]uint8, n)
	for i := range b {
		b[i] = uint8(from*37 + to*11 + i*7 + i>>12)
	}
	return b
}

// onRanks runs fn on ranks 0..n-1 at once, fails t with the first error,
// and checks that every link of the mesh (ends) was read to the end.
func onRanks(t *testing.T, ends [][]*linktest.Chan, name string, fn func(rank int) error) {
	t.Helper()
	n := len(ends)
	errs := testjob.Each(n, fn)
	for r := range n {
		require.NoError(t, errs[r], "%s: rank %d", name, r)
		for p, e := range ends[r] {
			if e != nil {
				require.Zero(t, e.Unread(), "%s: a frame from rank %d left unread at rank %d", name, p, r)
			}
		}
	}
}

func TestGather(t *testing.T) {
	for n := 1; n <= 5; n++ {
		for root := range n {
			for _, m := range []int{0, 1, 7, 1000} {
				name := fmt.Sprintf("n=%d root=%d m=%d", n, root, m)
				links, ends := linktest.Mesh(n)
				recv := make([]int32, n*m)
				onRanks(t, ends, name, func(r int) error {
					var dst []int32
					if r == root {
						dst = recv
					}
					return Gather(r, n, root, links[r], block(r, root, m), dst)
				})
				for p := range n {
					require.Equal(t, block(p, root, m), recv[p*m:(p+1)*m], "%s: block %d", name, p)
				}
			}
		}
	}
}

// GatherBlocks with blocks of their own lengths (empty ones among them),
// and with one block over a frame, which makes the root receive one rank
// after the other instead of all at once.
func TestGatherBlocks(t *testing.T) {
	for n := 1; n <= 5; n++ {
		for _, big := range []bool{false, true} {
			root := n / 2
			lens := make([]int, n)
			for p := range lens {
				lens[p] = (p * 5) % 4 // 0, 1, 2, 3, 0
			}
			if big {
				lens[n-1] = bigBytes
			}
			offs := offsets(lens)
			bounds := func(p int) (int, int) { return offs[p], offs[p+1] }
			name := fmt.Sprintf("n=%d big=%v", n, big)
			links, ends := linktest.Mesh(n)
			recv := make([]uint8, offs[n])
			onRanks(t, ends, name, func(r int) error {
				var dst []uint8
				if r == root {
					dst = recv
				}
				return GatherBlocks(r, root, links[r], byteBlock(r, root, lens[r]), dst, bounds)
			})
			for p := range n {
				require.True(t, string(byteBlock(p, root, lens[p])) == string(recv[offs[p]:offs[p+1]]), "%s: block %d", name, p)
			}
		}
	}
}

func TestScatter(t *testing.T) {
	for n := 1; n <= 5; n++ {
		for root := range n {
			for _, m := range []int{0, 1, 7, 1000} {
				name := fmt.Sprintf("n=%d root=%d m=%d", n, root, m)
				var whole []int32
				for p := range n {
					whole = append(whole, block(root, p, m)...)
				}
				links, ends := linktest.Mesh(n)
				recvs := make([][]int32, n)
				onRanks(t, ends, name, func(r int) error {
					recvs[r] = make([]int32, m)
					var src []int32
					if r == root {
						src = whole
					}
					return Scatter(r, n, root, links[r], src, recvs[r])
				})
				for p := range n {
					require.Equal(t, block(root, p, m), recvs[p], "%s: rank %d", name, p)
				}
			}
		}
	}
}

func TestAllToAll(t *testing.T) {
	for n := 1; n <= 5; n++ {
		for _, m := range []int{0, 1, 7, 1000} {
			name := fmt.Sprintf("n=%d m=%d", n, m)
			links, ends := linktest.Mesh(n)
			recvs := make([][]int32, n)
			onRanks(t, ends, name, func(r int) error {
				var send []int32
				for q := range n {
					send = append(send, block(r, q, m)...)
				}
				recvs[r] = make([]int32, n*m)
				return AllToAll(r, n, links[r], send, recvs[r])
			})
			for r := range n {
				for p := range n {
					require.Equal(t, block(p, r, m), recvs[r][p*m:(p+1)*m], "%s: rank %d from %d", name, r, p)
				}
			}
		}
	}
}

// The collectives that cut blocks into pieces, with blocks of a frame and a
// few bytes: Gather, Scatter and AllToAll on 2 and 3 ranks.
func TestBlocksOverAFrame(t *testing.T) {
	for _, n := range []int{2, 3} {
		root := n - 1
		name := fmt.Sprintf("gather n=%d", n)
		links, ends := linktest.Mesh(n)
		gathered := make([]uint8, n*bigBytes)
		onRanks(t, ends, name, func(r int) error {
			var dst []uint8
			if r == root {
				dst = gathered
			}
			return Gather(r, n, root, links[r], byteBlock(r, root, bigBytes), dst)
		})
		for p := range n {
			require.True(t, string(byteBlock(p, root, bigBytes)) == string(gathered[p*bigBytes:(p+1)*bigBytes]), "%s: block %d", name, p)
		}

		name = fmt.Sprintf("scatter n=%d", n)
		links, ends = linktest.Mesh(n)
		var whole []uint8
		for p := range n {
			whole = append(whole, byteBlock(root, p, bigBytes)...)
		}
		recvs := make([][]uint8, n)
		onRanks(t, ends, name, func(r int) error {
			recvs[r] = make([]uint8, bigBytes)
			var src []uint8
			if r == root {
				src = whole
			}
			return Scatter(r, n, root, links[r], src, recvs[r])
		})
		for p := range n {
			require.True(t, string(byteBlock(root, p, bigBytes)) == string(recvs[p]), "%s: rank %d", name, p)
		}

		name = fmt.Sprintf("alltoall n=%d", n)
		links, ends = linktest.Mesh(n)
		onRanks(t, ends, name, func(r int) error {
			var send []uint8
			for q := range n {
				send = append(send, byteBlock(r, q, bigBytes)...)
			}
			recvs[r] = make([]uint8, n*bigBytes)
			return AllToAll(r, n, links[r], send, recvs[r])
		})
		for r := range n {
			for p := range n {
				require.True(t, string(byteBlock(p, r, bigBytes)) == string(recvs[r][p*bigBytes:(p+1)*bigBytes]), "%s: rank %d from %d", name, r, p)
			}
		}
	}
}

// AllGatherV and AllToAllV with ragged counts: zeros, small blocks, and on
// some runs one block over a frame, so that an exchange has more pieces one
// way than the other.
func TestVCollectives(t *testing.T) {
	for n := 1; n <= 5; n++ {
		for _, big := range []bool{false, true} {
			if big && n > 3 {
				continue // the large blocks cost time, not coverage
			}
			count := func(p, q int) int {
				if big && p == 0 && q == n-1 {
					return bigBytes
				}
				return (p*3 + q*5 + n) % 4
			}
			name := fmt.Sprintf("allgatherv n=%d big=%v", n, big)
			counts := make([]int, n)
			for p := range n {
				counts[p] = count(p, n-1)
			}
			offs := offsets(counts)
			links, ends := linktest.Mesh(n)
			recvs := make([][]uint8, n)
			onRanks(t, ends, name, func(r int) error {
				recvs[r] = make([]uint8, offs[n])
				return AllGatherV(r, n, links[r], byteBlock(r, 9, counts[r]), counts, recvs[r])
			})
			for r := range n {
				for p := range n {
					require.True(t, string(byteBlock(p, 9, counts[p])) == string(recvs[r][offs[p]:offs[p+1]]), "%s: rank %d block %d", name, r, p)
				}
			}

			name = fmt.Sprintf("alltoallv n=%d big=%v", n, big)
			links, ends = linktest.Mesh(n)
			onRanks(t, ends, name, func(r int) error {
				var send []uint8
				sendCounts, recvCounts := make([]int, n), make([]int, n)
				for q := range n {
					send = append(send, byteBlock(r, q, count(r, q))...)
					sendCounts[q], recvCounts[q] = count(r, q), count(q, r)
				}
				recvs[r] = make([]uint8, offsets(recvCounts)[n])
				return AllToAllV(r, n, links[r], send, sendCounts, recvs[r], recvCounts)
			})
			for r := range n {
				off := 0
				for p := range n {
					require.True(t, string(byteBlock(p, r, count(p, r))) == string(recvs[r][off:off+count(p, r)]), "%s: rank %d from %d", name, r, p)
					off += count(p, r)
				}
			}
		}
	}
}

// offsets returns the prefix sums of counts: block p is [offs[p], offs[p+1]).
func offsets(counts []int) []int {
	offs := make([]int, len(counts)+1)
	for i, c := range counts {
		offs[i+1] = offs[i] + c
	}
	return offs
}

// A walk from any block, either way, finds every block where the prefix
// sums put it, wrapping around, over counts with zeros at either end.
func TestBlockWalk(t *testing.T) {
	for _, counts := range [][]int{{5}, {0}, {3, 0, 1}, {0, 2, 0, 7, 0}, {1, 1, 1, 1, 1, 1}} {
		offs := offsets(counts)
		n := len(counts)
		for start := range n {
			fwd, bwd := walkFrom(counts, start), walkFrom(counts, start)
			for k := range 2*n + 1 {
				p, q := (start+k)%n, ((start-k)%n+n)%n
				lo, hi := fwd.block()
				require.Equal(t, [3]int{p, offs[p], offs[p+1]}, [3]int{fwd.p, lo, hi}, "counts %v from %d, %d steps forward", counts, start, k)
				lo, hi = bwd.block()
				require.Equal(t, [3]int{q, offs[q], offs[q+1]}, [3]int{bwd.p, lo, hi}, "counts %v from %d, %d steps back", counts, start, k)
				fwd.next()
				bwd.prev()
			}
		}
	}
}

// The element type reaches the wire as its bytes: int64 blocks arrive whole.
func TestGatherOfWideElements(t *testing.T) {
	const n, m = 3, 5
	links, ends := linktest.Mesh(n)
	recv := make([]int64, n*m)
	onRanks(t, ends, "int64", func(r int) error {
		send := make([]int64, m)
		for i := range send {
			send[i] = int64(r)<<40 | int64(i)
		}
		var dst []int64
		if r == 0 {
			dst = recv
		}
		return Gather(r, n, 0, links[r], send, dst)
	})
	for p := range n {
		for i := range m {
			require.Equal(t, int64(p)<<40|int64(i), recv[p*m+i])
		}
	}
}

// brokenLink fails every call with err: the transport's verdict on a
// failed peer.
type brokenLink struct{ err error }

func (l brokenLink) Post([]byte) error           { return l.err }
func (l brokenLink) Wait() error                 { return l.err }
func (l brokenLink) Send([]byte) (uint64, error) { return 0, l.err }
func (l brokenLink) Flush(uint64) error          { return l.err }

// A link's error ends the call with that error, on the side that uses it.
func TestLinkErrorsAreReturned(t *testing.T) {
	broken := errors.New("rank 1 is gone")
	// Rank 0 is the root of a gather and a scatter, and a rank of an
	// all-to-all, whose link to rank 1 is broken; rank 1 never runs.
	links, _ := linktest.Mesh(3)
	links[0][1] = brokenLink{broken}
	require.ErrorIs(t, Gather(0, 3, 0, links[0], make([]int32, 4), make([]int32, 12)), broken, "gather")
	require.ErrorIs(t, Scatter(0, 3, 0, links[0], make([]int32, 12), make([]int32, 4)), broken, "scatter")
	require.ErrorIs(t, Gather(0, 3, 1, links[0], make([]int32, 4), nil), broken, "gather, sending to the root")
	require.ErrorIs(t, AllToAll(0, 3, links[0], make([]int32, 12), make([]int32, 12)), broken, "alltoall")
}
