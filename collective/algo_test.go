package collective_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// TestRabenseifnerAgainstFloat64Reference sums arbitrary floats with
// Rabenseifner's algorithm on 1..8 ranks and odd counts, compares them with
// a float64 sum within rounding and checks every rank has the same bits.
func TestRabenseifnerAgainstFloat64Reference(t *testing.T) {
	for n := 1; n <= 8; n++ {
		comms := local(t, n, collective.Config{Algorithm: "rabenseifner"})
		for _, count := range oddCounts(n) {
			rng := rand.New(rand.NewPCG(uint64(n), uint64(count)))
			bufs := make([][]float32, n)
			ref, mag := make([]float64, count), make([]float64, count)
			for r := range bufs {
				bufs[r] = make([]float32, count)
				for i := range bufs[r] {
					bufs[r][i] = float32(rng.NormFloat64() * math.Exp2(float64(rng.IntN(20)-10)))
					ref[i] += float64(bufs[r][i])
					mag[i] += math.Abs(float64(bufs[r][i]))
				}
			}
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				return collective.AllReduce(ctx, c, bufs[r], collective.Sum)
			}))
			for i := range count {
				// Each of the n-1 additions rounds by at most 2^-24 of a
				// partial sum, which is at most mag.
				require.InDelta(t, ref[i], float64(bufs[0][i]), float64(n)*0x1p-24*mag[i]+1e-30, "n=%d count=%d i=%d", n, count, i)
			}
			requireIdentical(t, bufs)
			if n > 1 { // one rank has nothing to run
				assert.Contains(t, comms[0].Status().Recent[0].Call, "rabenseifner")
			}
		}
	}
}

// TestRabenseifnerSteadyStateAllocatesNothing: the scratch space comes from
// the communicator, grown once.
func TestRabenseifnerSteadyStateAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, tr := range []string{"mem", "tcp", "shm"} {
		for _, n := range []int{3, 4} {
			for _, count := range []int{1, 16 << 10, 1 << 20} {
				t.Run(fmt.Sprintf("%s/n=%d/%d", tr, n, count), func(t *testing.T) {
					comms := formComms(t, tr, n, collective.Config{Algorithm: "rabenseifner"})
					requireNoAllocs(t, allReduceDriver(t, comms, count), "AllReduce")
				})
			}
		}
	}
}

// TestBroadcastEachScheduleForced runs the tree and the chain, each forced,
// at every root, on sizes either would not be chosen for.
func TestBroadcastEachScheduleForced(t *testing.T) {
	for _, algo := range []string{"doubling", "ring"} {
		for n := 1; n <= 8; n++ {
			cfg := tinyPipeline
			cfg.Algorithm = algo
			comms := local(t, n, cfg)
			for root := range n {
				for _, count := range []int{0, 1, 3, 4099} {
					bufs := make([][]int32, n)
					requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
						bufs[r] = make([]int32, count)
						if r == root {
							bufs[r] = inputs[int32](root+7, count, collective.Sum)
						}
						return collective.Broadcast(ctx, c, bufs[r], root)
					}))
					want := inputs[int32](root+7, count, collective.Sum)
					for r := range n {
						require.Equal(t, want, bufs[r], "%s n=%d root=%d count=%d rank %d", algo, n, root, count, r)
					}
				}
			}
		}
	}
}

// A forced tree broadcast of a vector larger than one frame goes in pieces.
func TestTreeBroadcastOfALargeVector(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 5 x 4 MiB")
	}
	comms := local(t, 5, collective.Config{Algorithm: "doubling"})
	const count = 4<<20 + 3 // int8: a full 4 MiB piece and a short one
	bufs := make([][]int8, 5)
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		bufs[r] = make([]int8, count)
		if r == 3 {
			bufs[r] = inputs[int8](3, count, collective.Sum)
		}
		return collective.Broadcast(ctx, c, bufs[r], 3)
	}))
	requireIdentical(t, bufs)
	assert.Equal(t, inputs[int8](3, count, collective.Sum), bufs[0])
}

// TestTreeBroadcastAllocatesNothing: small (tree) broadcasts from every
// root allocate nothing in steady state.
func TestTreeBroadcastAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	const n = 4
	comms := local(t, n, collective.Config{})
	bufs := make([][]float64, n)
	calls := make([]int, n) // per rank, so that every rank takes the same root
	for r := range bufs {
		bufs[r] = make([]float64, 16)
	}
	requireNoAllocs(t, newDriver(t, comms, func(r int, c *collective.Comm) error {
		calls[r]++
		return collective.Broadcast(ctx, c, bufs[r], calls[r]%n)
	}), "Broadcast")
	assert.Contains(t, comms[0].Status().Recent[0].Call, "tree")
}

// formMixed forms a TCP communicator whose ranks have their own configs
// (one RINGO_ALGO per rank, say).
func formMixed(t *testing.T, cfgs []collective.Config) []*collective.Comm {
	t.Helper()
	addr := freeAddr(t)
	comms := make([]*collective.Comm, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for r := len(cfgs) - 1; r >= 0; r-- {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cfgs[r]
			c.Rank, c.Size, c.Addr, c.Timeout = r, len(cfgs), addr, testTimeout
			if c.Transport == "" {
				c.Transport = "tcp"
			}
			comms[r], errs[r] = collective.New(ctx, c)
		}()
	}
	wg.Wait()
	t.Cleanup(func() { closeAll(comms) })
	requireAllOK(t, errs)
	return comms
}

// TestRanksThatChoseDifferentAlgorithmsFail: the algorithm travels in the
// signature, so ranks forced to different algorithms (RINGO_ALGO set on
// some ranks only) fail with ErrMismatch instead of exchanging garbage or
// hanging, for AllReduce and for Broadcast (tree against chain).
func TestRanksThatChoseDifferentAlgorithmsFail(t *testing.T) {
	cases := []struct {
		name       string
		odd, other string
		call       func(c *collective.Comm) error
		words      []string
	}{
		{"allreduce", "ring", "doubling", func(c *collective.Comm) error {
			return collective.AllReduce(ctx, c, make([]float32, 5), collective.Sum)
		}, []string{"ring", "doubling"}},
		{"allreduce rabenseifner", "rabenseifner", "ring", func(c *collective.Comm) error {
			return collective.AllReduce(ctx, c, make([]float32, 5), collective.Sum)
		}, []string{"rabenseifner", "ring"}},
		{"broadcast", "ring", "doubling", func(c *collective.Comm) error {
			return collective.Broadcast(ctx, c, make([]int64, 5), 0)
		}, []string{"Broadcast"}},
	}
	for _, tc := range cases {
		for _, n := range []int{2, 3, 5} {
			for _, odd := range []int{0, n - 1} {
				t.Run(fmt.Sprintf("%s/n=%d/odd=%d", tc.name, n, odd), func(t *testing.T) {
					cfgs := make([]collective.Config, n)
					for r := range cfgs {
						cfgs[r].Algorithm = tc.other
					}
					cfgs[odd].Algorithm = tc.odd
					comms := formMixed(t, cfgs)
					errs := each(comms, func(r int, c *collective.Comm) error { return tc.call(c) })
					for r, c := range comms {
						if errs[r] == nil { // learns on its next call (see the package doc)
							errs[r] = collective.Barrier(ctx, c)
						}
					}
					requireAllAborted(t, errs, collective.ErrMismatch, tc.words...)
				})
			}
		}
	}
}
