package collective_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

func rootsOf(n int) []int {
	if n <= 3 {
		r := make([]int, n)
		for i := range r {
			r[i] = i
		}
		return r
	}
	return []int{0, n / 2, n - 1}
}

// TestReduce runs Reduce by both of its paths: an AllReduce on a copy
// (doubling) and a reduce-scatter plus gather (ring).
func TestReduce(t *testing.T) {
	for _, algo := range []string{"ring", "doubling"} {
		t.Run(algo, func(t *testing.T) {
			t.Run("float64", reduceMatrix[float64](algo))
			t.Run("int32", reduceMatrix[int32](algo))
			t.Run("uint8", reduceMatrix[uint8](algo))
		})
	}
}

func reduceMatrix[T collective.Elem](algo string) func(t *testing.T) {
	return func(t *testing.T) { reduceMatrixWith[T](t, algo) }
}

func reduceMatrixWith[T collective.Elem](t *testing.T, algo string) {
	for n := 1; n <= 8; n++ {
		cfg := tinyPipeline
		cfg.Algorithm = algo
		comms := local(t, n, cfg)
		reduceOn[T](t, comms)
		closeAll(comms)
	}
}

func reduceOn[T collective.Elem](t *testing.T, comms []*collective.Comm) {
	n := len(comms)
	for _, root := range rootsOf(n) {
		for _, op := range opsFor[T]() {
			for _, count := range []int{0, 1, n + 2, 97, 1000} {
				recv := make([]T, count)
				sends := make([][]T, n)
				requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
					sends[r] = inputs[T](r, count, op)
					var out []T
					if r == root {
						out = recv
					}
					return collective.Reduce(ctx, c, sends[r], out, op, root)
				}))
				for i := range count {
					want := reference[T](n, i, op)
					if op == collective.Avg {
						require.InEpsilon(t, float64(want)+1e-300, float64(recv[i])+1e-300, 1e-6)
					} else {
						require.Equal(t, want, recv[i], "n=%d root=%d %v count=%d i=%d", n, root, op, count, i)
					}
				}
				for r := range n {
					require.Equal(t, inputs[T](r, count, op), sends[r], "Reduce must not modify send (rank %d)", r)
				}
			}
		}
	}
}

func TestGatherAndScatter(t *testing.T) {
	for n := 1; n <= 8; n++ {
		comms := local(t, n, tinyPipeline)
		gatherScatterOn(t, comms)
		closeAll(comms)
	}
}

func gatherScatterOn(t *testing.T, comms []*collective.Comm) {
	n := len(comms)
	for _, root := range rootsOf(n) {
		for _, m := range []int{0, 1, 3, 1001} {
			name := fmt.Sprintf("n=%d root=%d m=%d", n, root, m)
			gathered := make([]int64, n*m)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				var recv []int64
				if r == root {
					recv = gathered
				}
				return collective.Gather(ctx, c, inputs[int64](r, m, collective.Sum), recv, root)
			}))
			for p := range n {
				require.Equal(t, inputs[int64](p, m, collective.Sum), gathered[p*m:(p+1)*m], "%s block %d", name, p)
			}

			whole := inputs[float32](root+50, n*m, collective.Sum)
			got := make([][]float32, n)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				got[r] = make([]float32, m)
				var send []float32
				if r == root {
					send = whole
				}
				return collective.Scatter(ctx, c, send, got[r], root)
			}))
			for p := range n {
				require.Equal(t, whole[p*m:(p+1)*m], got[p], "%s rank %d", name, p)
			}
		}
	}
}

func TestAllToAll(t *testing.T) {
	for n := 1; n <= 8; n++ {
		comms := local(t, n, tinyPipeline)
		allToAllOn(t, comms)
		closeAll(comms)
	}
}

func allToAllOn(t *testing.T, comms []*collective.Comm) {
	n := len(comms)
	for _, m := range []int{0, 1, 2, 7, 513} {
		recvs := make([][]int32, n)
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			recvs[r] = make([]int32, n*m)
			return collective.AllToAll(ctx, c, inputs[int32](r, n*m, collective.Sum), recvs[r])
		}))
		for r := range n {
			for p := range n {
				// Block p of rank r's recv is block r of rank p's send.
				require.Equal(t, inputs[int32](p, n*m, collective.Sum)[r*m:(r+1)*m], recvs[r][p*m:(p+1)*m], "n=%d m=%d rank %d from %d", n, m, r, p)
			}
		}
	}
}

func TestRootedCallsRejectBadArguments(t *testing.T) {
	comms := local(t, 3, collective.Config{})
	errs := each(comms, func(r int, c *collective.Comm) error {
		return collective.Gather(ctx, c, make([]int8, 4), make([]int8, 12), 3)
	})
	requireAllAborted(t, errs, collective.ErrInvalid, "root 3")

	comms = local(t, 2, collective.Config{})
	errs = each(comms, func(r int, c *collective.Comm) error {
		if r == 0 {
			return collective.Gather(ctx, c, make([]int8, 4), make([]int8, 8), 0)
		}
		return collective.Scatter(ctx, c, nil, make([]int8, 4), 0)
	})
	for r, c := range comms {
		if errs[r] == nil {
			errs[r] = collective.Barrier(ctx, c)
		}
	}
	requireAllAborted(t, errs, collective.ErrMismatch, "Gather(int8, count=4, root=0)", "Scatter(int8, count=4, root=0)")

	comms = local(t, 2, collective.Config{})
	errs = each(comms, func(r int, c *collective.Comm) error {
		buf := make([]float32, 4)
		return collective.AllToAll(ctx, c, buf, buf)
	})
	requireAllAborted(t, errs, collective.ErrInvalid, "overlap")
	assert.NotNil(t, errs[0])
}
