package doubling_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/algo/doubling"
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/internal/linktest"
	"github.com/ringo-ml/ringo/link"
)

type allReduceFunc[T link.Elem] func(rank, size int, links []link.Link, buf, scratch []T, red link.Reducer[T]) error

// run reduces bufs[r] on every rank r at once and returns each rank's error.
func run[T link.Elem](t *testing.T, algo allReduceFunc[T], bufs [][]T, red link.Reducer[T]) {
	t.Helper()
	n := len(bufs)
	links, _ := linktest.Mesh(n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = algo(r, n, links[r], bufs[r], make([]T, 2*len(bufs[r])), red)
		}()
	}
	wg.Wait()
	for r, err := range errs {
		require.NoError(t, err, "rank %d", r)
	}
}

func sum[T link.Elem](t *testing.T) link.Reducer[T] {
	k, ok := kernel.For[T](kernel.Sum)
	require.True(t, ok)
	return link.Reducer[T]{ReduceTo: k.ReduceTo}
}

var algorithms = []struct {
	name string
	f32  allReduceFunc[float32]
	i64  allReduceFunc[int64]
}{
	{"doubling", doubling.AllReduce[float32], doubling.AllReduce[int64]},
	{"doubling/short-scratch", shortScratch(doubling.AllReduce[float32]), shortScratch(doubling.AllReduce[int64])},
	{"rabenseifner", doubling.Rabenseifner[float32], doubling.Rabenseifner[int64]},
}

// shortScratch gives algo only len(buf) elements of scratch: the schedule
// that waits for every send.
func shortScratch[T link.Elem](algo allReduceFunc[T]) allReduceFunc[T] {
	return func(rank, size int, links []link.Link, buf, scratch []T, red link.Reducer[T]) error {
		return algo(rank, size, links, buf, scratch[:len(buf)], red)
	}
}

// counts are the lengths that exercise empty, short, uneven and prime blocks.
func counts(n int) []int {
	return []int{0, 1, 2, n - 1, n, n + 1, 2*n + 1, 7, 13, 97, 1009}
}

// TestAgainstFloat64Reference sums arbitrary floats on 1..8 ranks and
// compares with a float64 sum within float32 rounding; every rank must end
// with the same bits.
func TestAgainstFloat64Reference(t *testing.T) {
	for _, algo := range algorithms {
		for n := 1; n <= 8; n++ {
			for _, count := range counts(n) {
				t.Run(fmt.Sprintf("%s/n=%d/count=%d", algo.name, n, count), func(t *testing.T) {
					rng := rand.New(rand.NewPCG(uint64(n), uint64(count)))
					bufs := make([][]float32, n)
					ref := make([]float64, count)
					for r := range bufs {
						bufs[r] = make([]float32, count)
						for i := range bufs[r] {
							bufs[r][i] = float32(rng.NormFloat64())
							ref[i] += float64(bufs[r][i])
						}
					}
					run(t, algo.f32, bufs, sum[float32](t))
					for i := range count {
						require.InDelta(t, ref[i], float64(bufs[0][i]), 1e-6*float64(n)*(1+math.Abs(ref[i])), "i=%d", i)
					}
					for r := 1; r < n; r++ {
						require.Equal(t, kernel.Bytes(bufs[0]), kernel.Bytes(bufs[r]), "rank %d differs from rank 0", r)
					}
				})
			}
		}
	}
}

// TestExactIntegers checks every element, on every rank, of an integer sum.
func TestExactIntegers(t *testing.T) {
	for _, algo := range algorithms {
		for _, n := range []int{2, 3, 5, 6, 7, 8, 11, 16} {
			count := 3*n + 2
			bufs := make([][]int64, n)
			for r := range bufs {
				bufs[r] = make([]int64, count)
				for i := range bufs[r] {
					bufs[r][i] = int64(r*1000 + i)
				}
			}
			run(t, algo.i64, bufs, sum[int64](t))
			for r := range n {
				for i := range count {
					require.Equal(t, int64(n*(n-1)/2*1000+n*i), bufs[r][i], "%s n=%d rank %d i=%d", algo.name, n, r, i)
				}
			}
		}
	}
}

// TestAvgDividesOnce checks that Avg (Div) is applied exactly once to every
// element, whichever rank owns its block.
func TestAvgDividesOnce(t *testing.T) {
	for _, n := range []int{2, 3, 4, 6, 8} {
		count := 2*n + 3
		bufs := make([][]float64, n)
		for r := range bufs {
			bufs[r] = make([]float64, count)
			for i := range bufs[r] {
				bufs[r][i] = float64(i + 1)
			}
		}
		red := sum[float64](t)
		red.Div = kernel.DivFunc[float64]()
		run(t, doubling.Rabenseifner[float64], bufs, red)
		for r := range n {
			for i := range count {
				require.Equal(t, float64(i+1), bufs[r][i], "n=%d rank %d i=%d", n, r, i)
			}
		}
	}
}
