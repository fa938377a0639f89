package nn

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// gemmRef is C = alpha·op(A)·op(B) + beta·C in float64.
func gemmRef(transA, transB bool, m, n, k int, alpha float64, a, b []float32, beta float64, c []float32) []float64 {
	out := make([]float64, m*n)
	for i := range m {
		for j := range n {
			s := 0.0
			for l := range k {
				av := a[i*k+l]
				if transA {
					av = a[l*m+i]
				}
				bv := b[l*n+j]
				if transB {
					bv = b[j*k+l]
				}
				s += float64(av) * float64(bv)
			}
			out[i*n+j] = alpha*s + beta*float64(c[i*n+j])
		}
	}
	return out
}

func randSlice(rng *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = 2*rng.Float32() - 1
	}
	return s
}

func TestGemmMatchesFloat64Reference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	// Sizes on both sides of the tile edges (64 rows, 192 columns), odd
	// ones, and an empty inner dimension.
	shapes := [][3]int{{1, 1, 1}, {3, 5, 7}, {64, 192, 10}, {65, 193, 33}, {130, 400, 70}, {7, 9, 0}, {200, 10, 784}}
	for _, s := range shapes {
		m, n, k := s[0], s[1], s[2]
		for _, tr := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
			for _, beta := range []float32{0, 1, 0.5} {
				t.Run(fmt.Sprintf("%dx%dx%d/tA=%v/tB=%v/beta=%v", m, n, k, tr[0], tr[1], beta), func(t *testing.T) {
					a, b, c := randSlice(rng, m*k), randSlice(rng, k*n), randSlice(rng, m*n)
					want := gemmRef(tr[0], tr[1], m, n, k, 0.75, a, b, float64(beta), c)
					gemm(tr[0], tr[1], m, n, k, 0.75, a, b, beta, c)
					worst, at := 0.0, -1
					for i := range want {
						if d := math.Abs(want[i] - float64(c[i])); d > worst {
							worst, at = d, i
						}
					}
					require.LessOrEqual(t, worst, 1e-5*float64(k+1), "element %d", at)
				})
			}
		}
	}
}

func TestGemmAllocatesNothing(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	a, b, c := randSlice(rng, 256*300), randSlice(rng, 300*256), make([]float32, 256*256)
	allocs := testing.AllocsPerRun(5, func() { gemm(false, true, 256, 256, 300, 1, a, b, 0, c) })
	require.Zero(t, allocs)
}
