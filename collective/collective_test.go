package collective_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/kernel"
)

func TestAllReduceEveryTypeOpSizeAndCount(t *testing.T) {
	for _, algo := range []string{"ring", "doubling", "rabenseifner", "bidir"} {
		t.Run(algo, func(t *testing.T) {
			t.Run("int8", allReduceMatrix[int8](algo))
			t.Run("uint8", allReduceMatrix[uint8](algo))
			t.Run("int32", allReduceMatrix[int32](algo))
			t.Run("uint32", allReduceMatrix[uint32](algo))
			t.Run("int64", allReduceMatrix[int64](algo))
			t.Run("uint64", allReduceMatrix[uint64](algo))
			t.Run("float32", allReduceMatrix[float32](algo))
			t.Run("float64", allReduceMatrix[float64](algo))
		})
	}
}

func allReduceMatrix[T collective.Elem](algo string) func(t *testing.T) {
	return func(t *testing.T) { allReduceMatrixOver[T](t, local, algo) }
}

// allReduceMatrixOver checks AllReduce of T with every op and odd count on
// 1..8 ranks formed by form, with algo.
func allReduceMatrixOver[T collective.Elem](t *testing.T, form former, algo string) {
	for n := 1; n <= 8; n++ {
		cfg := tinyPipeline
		if n%2 == 0 {
			cfg = collective.Config{} // default pipeline on every other size
		}
		cfg.Algorithm = algo
		comms := form(t, n, cfg)
		allReduceOn[T](t, comms)
		closeAll(comms)
	}
}

// allReduceOn checks AllReduce of T with every op and odd count on comms.
func allReduceOn[T collective.Elem](t *testing.T, comms []*collective.Comm) {
	n := len(comms)
	for _, op := range opsFor[T]() {
		for _, count := range oddCounts(n) {
			results := make([][]T, n)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				results[r] = inputs[T](r, count, op)
				return collective.AllReduce(ctx, c, results[r], op)
			}))
			for i := range count {
				want := reference[T](n, i, op)
				if op == collective.Avg {
					require.InEpsilon(t, float64(want)+1e-300, float64(results[0][i])+1e-300, 1e-6, "n=%d count=%d i=%d", n, count, i)
				} else if results[0][i] != want {
					require.Failf(t, "wrong result", "n=%d %v count=%d: element %d = %v, want %v", n, op, count, i, results[0][i], want)
				}
			}
			requireIdentical(t, results)
		}
	}
}

func TestAllReduceUpTo16Ranks(t *testing.T) {
	for n := 9; n <= 16; n++ {
		cfg := tinyPipeline
		if n%2 == 1 {
			cfg.Algorithm = "doubling"
		}
		comms := local(t, n, cfg)
		for _, count := range []int{0, 1, n - 1, n + 3, 61, 1031} {
			results := make([][]float32, n)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				results[r] = inputs[float32](r, count, collective.Sum)
				return collective.AllReduce(ctx, c, results[r], collective.Sum)
			}))
			for i := range count {
				require.Equal(t, reference[float32](n, i, collective.Sum), results[0][i], "n=%d count=%d i=%d", n, count, i)
			}
			requireIdentical(t, results)
		}
	}
}

// TestAllReduceRandomFloats compares sums of arbitrary floats with a float64
// reference within rounding, and checks every rank has the same bits.
func TestAllReduceRandomFloats(t *testing.T) {
	for _, n := range []int{2, 3, 5, 8} {
		comms := local(t, n, collective.Config{})
		const count = 100_003 // prime, spans several default segments
		results := make([][]float32, n)
		rng := rand.New(rand.NewPCG(1, uint64(n)))
		ref := make([]float64, count)
		for r := range n {
			results[r] = make([]float32, count)
			for i := range results[r] {
				results[r][i] = float32(rng.NormFloat64())
				ref[i] += float64(results[r][i])
			}
		}
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			return collective.AllReduce(ctx, c, results[r], collective.Sum)
		}))
		for i := range count {
			require.InDelta(t, ref[i], float64(results[0][i]), 1e-5*float64(n)*(1+math.Abs(ref[i])), "i=%d", i)
		}
		requireIdentical(t, results)
	}
}

func TestAllReduceNaNPropagates(t *testing.T) {
	comms := local(t, 3, collective.Config{})
	for _, op := range []collective.Op{collective.Sum, collective.Prod, collective.Min, collective.Max, collective.Avg} {
		results := make([][]float64, 3)
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			results[r] = []float64{1, 2, 3, 4, 5}
			if r == 1 {
				results[r][2] = math.NaN()
			}
			return collective.AllReduce(ctx, c, results[r], op)
		}))
		for r := range 3 {
			assert.True(t, math.IsNaN(results[r][2]), "%v rank %d", op, r)
			assert.False(t, math.IsNaN(results[r][1]), "%v rank %d", op, r)
		}
	}
}

func TestReduceScatter(t *testing.T) {
	t.Run("float32", reduceScatterMatrix[float32](local))
	t.Run("float64", reduceScatterMatrix[float64](local))
	t.Run("int64", reduceScatterMatrix[int64](local))
	t.Run("uint8", reduceScatterMatrix[uint8](local))
}

func reduceScatterMatrix[T collective.Elem](form former) func(t *testing.T) {
	return func(t *testing.T) { reduceScatterMatrixOver[T](t, form) }
}

func reduceScatterMatrixOver[T collective.Elem](t *testing.T, form former) {
	for n := 1; n <= 8; n++ {
		comms := form(t, n, tinyPipeline)
		reduceScatterOn[T](t, comms)
		closeAll(comms)
	}
}

func reduceScatterOn[T collective.Elem](t *testing.T, comms []*collective.Comm) {
	n := len(comms)
	for _, op := range opsFor[T]() {
		for _, m := range []int{0, 1, 2, 3, 7, 33, 257} {
			for _, inPlace := range []bool{false, true} {
				recvs := make([][]T, n)
				requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
					send := inputs[T](r, n*m, op)
					if inPlace {
						recvs[r] = send[r*m : (r+1)*m]
					} else {
						recvs[r] = make([]T, m)
					}
					return collective.ReduceScatter(ctx, c, send, recvs[r], op)
				}))
				for r := range n {
					for j := range m {
						want := reference[T](n, r*m+j, op)
						got := recvs[r][j]
						if op == collective.Avg {
							require.InEpsilon(t, float64(want)+1e-300, float64(got)+1e-300, 1e-6)
						} else {
							require.Equal(t, want, got, "n=%d %v m=%d rank %d j=%d inPlace=%v", n, op, m, r, j, inPlace)
						}
					}
				}
			}
		}
	}
}

func TestAllGather(t *testing.T) {
	t.Run("int8", allGatherMatrix[int8](local))
	t.Run("uint32", allGatherMatrix[uint32](local))
	t.Run("float32", allGatherMatrix[float32](local))
	t.Run("float64", allGatherMatrix[float64](local))
}

func allGatherMatrix[T collective.Elem](form former) func(t *testing.T) {
	return func(t *testing.T) {
		for n := 1; n <= 8; n++ {
			comms := form(t, n, tinyPipeline)
			allGatherOn[T](t, comms)
			closeAll(comms)
		}
	}
}

func allGatherOn[T collective.Elem](t *testing.T, comms []*collective.Comm) {
	n := len(comms)
	for _, m := range []int{0, 1, 2, 3, 5, 64, 1009} {
		for _, inPlace := range []bool{false, true} {
			recvs := make([][]T, n)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				recvs[r] = make([]T, n*m)
				send := inputs[T](r, m, collective.Sum)
				if inPlace {
					copy(recvs[r][r*m:], send)
					send = recvs[r][r*m : (r+1)*m]
				}
				return collective.AllGather(ctx, c, send, recvs[r])
			}))
			for r := range n {
				for src := range n {
					require.Equal(t, inputs[T](src, m, collective.Sum), recvs[r][src*m:(src+1)*m], "n=%d m=%d at rank %d, block %d", n, m, r, src)
				}
			}
		}
	}
}

// TestReduceScatterThenAllGatherIsAllReduce: with n divisible by the world
// size the ring's chunks of both are the same, so the results are the same
// bits (recursive doubling adds in another order: equal within rounding).
func TestReduceScatterThenAllGatherIsAllReduce(t *testing.T) {
	for _, n := range []int{2, 3, 4, 7} {
		comms := local(t, n, collective.Config{Algorithm: "ring"})
		m := 10_007
		rng := rand.New(rand.NewPCG(7, uint64(n)))
		data := make([][]float32, n)
		for r := range data {
			data[r] = make([]float32, n*m)
			for i := range data[r] {
				data[r][i] = rng.Float32()*2 - 1
			}
		}
		viaAR := make([][]float32, n)
		viaRSAG := make([][]float32, n)
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			viaAR[r] = append([]float32(nil), data[r]...)
			if err := collective.AllReduce(ctx, c, viaAR[r], collective.Sum); err != nil {
				return err
			}
			block := make([]float32, m)
			if err := collective.ReduceScatter(ctx, c, data[r], block, collective.Sum); err != nil {
				return err
			}
			viaRSAG[r] = make([]float32, n*m)
			return collective.AllGather(ctx, c, block, viaRSAG[r])
		}))
		for r := range n {
			require.Equal(t, kernel.Bytes(viaAR[r]), kernel.Bytes(viaRSAG[r]), "n=%d rank %d", n, r)
		}
	}
}

func TestBroadcast(t *testing.T) { broadcastMatrixOver(t, local) }

func broadcastMatrixOver(t *testing.T, form former) {
	for n := 1; n <= 8; n++ {
		comms := form(t, n, tinyPipeline)
		broadcastOn(t, comms)
		closeAll(comms)
	}
}

func broadcastOn(t *testing.T, comms []*collective.Comm) {
	n := len(comms)
	for root := range n {
		for _, count := range []int{0, 1, 5, 1000, 7001} {
			bufs := make([][]float64, n)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				bufs[r] = make([]float64, count)
				if r == root {
					bufs[r] = inputs[float64](root+100, count, collective.Sum)
				}
				return collective.Broadcast(ctx, c, bufs[r], root)
			}))
			want := inputs[float64](root+100, count, collective.Sum)
			for r := range n {
				require.Equal(t, want, bufs[r], "n=%d root=%d count=%d rank %d", n, root, count, r)
			}
		}
	}
}

func TestBarrierWaitsForEveryRank(t *testing.T) {
	for n := 1; n <= 9; n++ {
		comms := local(t, n, collective.Config{})
		for round := 1; round <= 3; round++ {
			var arrived atomic.Int32
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				arrived.Add(1)
				if err := collective.Barrier(ctx, c); err != nil {
					return err
				}
				if got := arrived.Load(); got < int32(n) {
					return fmt.Errorf("rank %d left the barrier after %d of %d arrivals", r, got, n)
				}
				return nil
			}))
			arrived.Store(0)
		}
	}
}

func TestManyCallsInSequence(t *testing.T) {
	comms := local(t, 4, tinyPipeline)
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		for i := range 200 {
			buf := []int64{int64(r), int64(i)}
			if err := collective.AllReduce(ctx, c, buf, collective.Sum); err != nil {
				return err
			}
			if buf[0] != 6 || buf[1] != int64(4*i) {
				return fmt.Errorf("call %d: got %v", i, buf)
			}
			if i%7 == 0 {
				if err := collective.Barrier(ctx, c); err != nil {
					return err
				}
			}
		}
		return nil
	}))
	// The flight recorder keeps the last 16 calls, in order.
	st := comms[0].Status()
	require.Len(t, st.Recent, 16)
	for i, r := range st.Recent {
		assert.Equal(t, st.Seq-uint64(15-i), r.Op)
	}
}

func TestAlgorithmChoice(t *testing.T) {
	_, err := collective.LocalConfig(2, collective.Config{Algorithm: "telepathy"})
	require.ErrorIs(t, err, collective.ErrInvalid)
	// Both algorithms give the same bits for a commutative integer op, and
	// auto takes doubling for a small vector and the ring for a large one.
	for _, count := range []int{3, 100_000} { // 24 B and 800 KB
		results := map[string][]int64{}
		for _, algo := range []string{"ring", "doubling", "auto"} {
			comms := local(t, 5, collective.Config{Algorithm: algo})
			bufs := make([][]int64, 5)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				bufs[r] = inputs[int64](r, count, collective.Sum)
				return collective.AllReduce(ctx, c, bufs[r], collective.Sum)
			}))
			requireIdentical(t, bufs)
			results[algo] = bufs[0]
			st := comms[0].Status()
			want := "doubling"
			if algo == "ring" || algo == "auto" && count*8 > 300<<10 {
				want = "ring"
			}
			assert.Contains(t, st.Recent[0].Call, want, "algo %s count %d", algo, count)
		}
		assert.Equal(t, results["ring"], results["doubling"])
		assert.Equal(t, results["ring"], results["auto"])
	}
}

// A forced recursive doubling of a vector larger than one frame goes in
// pieces.
func TestDoublingOfALargeVector(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 3 x 24 MB")
	}
	comms := local(t, 3, collective.Config{Algorithm: "doubling"})
	const count = 3<<20 + 11 // 12 MiB of int32 and a tail: 3 full pieces and a short one
	bufs := make([][]int32, 3)
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		bufs[r] = inputs[int32](r, count, collective.Max)
		return collective.AllReduce(ctx, c, bufs[r], collective.Max)
	}))
	for i := 0; i < count; i += 997 {
		require.Equal(t, reference[int32](3, i, collective.Max), bufs[2][i], "i=%d", i)
	}
	requireIdentical(t, bufs)
}
