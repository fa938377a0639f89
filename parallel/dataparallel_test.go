package parallel_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/internal/testmodel"
)

// perRank is the samples each rank computes a step's gradient on: a power
// of two, so that each rank's mean is exact.
const perRank = 4

// tiny makes many buckets of the test model (a first bucket of 4 values,
// the others of 16; head3.w, 1000 values, is bigger than any).
var tiny = parallel.DataParallelOptions{BucketBytes: 64, FirstBucketBytes: 16}

// readyMode says how a rank marks its parameters ready.
type readyMode int

const (
	readyInBackward readyMode = iota // each as backward finishes it, last layer first
	readyNever                       // never: Sync reduces everything
	readyShuffled                    // after backward, in a random order per rank and step, from 3 goroutines
	readySome                        // some parameters only, none at all on rank 0
)

func (m readyMode) String() string {
	return [...]string{"backward", "never", "shuffled", "some"}[m]
}

// trainDDP trains the model for steps on n ranks over Local communicators
// and returns each rank's model.
func trainDDP(t *testing.T, n, steps int, opts parallel.DataParallelOptions, mode readyMode) []*testmodel.Model {
	t.Helper()
	comms := local(t, n)
	models := make([]*testmodel.Model, n)
	params := make([][]*parallel.Param, n)
	for r := range n {
		models[r] = testmodel.New(testmodel.HeadSizes(), r != 0)
		params[r] = models[r].Params
	}
	dps := newDP(t, comms, params, opts)
	testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
		m, dp := models[r], dps[r]
		rng := rand.New(rand.NewPCG(uint64(r), 7))
		for step := range steps {
			from := step*n*perRank + r*perRank // rank r's share of the global batch
			switch mode {
			case readyInBackward:
				m.Backward(from, perRank, 1, dp.Ready)
			case readyNever:
				m.Backward(from, perRank, 1, nil)
			case readyShuffled:
				m.Backward(from, perRank, 1, nil)
				readyConcurrently(dp, m.Params, rng.Perm(len(m.Params)), 3)
			case readySome:
				m.Backward(from, perRank, 1, func(p *parallel.Param) {
					if r != 0 && (len(p.Name)+r+step)%3 != 0 {
						dp.Ready(p)
					}
				})
			}
			if err := dp.Sync(ctx); err != nil {
				return err
			}
			sgd(m.Params)
		}
		return nil
	}))
	return models
}

// readyConcurrently marks params ready in the order perm gives, dealt out
// to g goroutines.
func readyConcurrently(dp *parallel.DataParallel, params []*parallel.Param, perm []int, g int) {
	var wg sync.WaitGroup
	for k := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := k; i < len(perm); i += g {
				dp.Ready(params[perm[i]])
			}
		}()
	}
	wg.Wait()
}

// Parameters after 10 steps of data parallel SGD are bitwise those of one
// process on the global batch, on 1 to 4 ranks, with one bucket or many
// (odd sizes, a parameter bigger than a bucket), whatever the order and
// goroutines in which ranks mark parameters ready, and whether they mark
// some, none or all.
func TestTrainingEqualsOneProcessBitwise(t *testing.T) {
	const steps = 10
	for n := 1; n <= 4; n++ {
		want := singleProcess(testmodel.HeadSizes(), steps, n*perRank, false)
		for _, buckets := range []struct {
			name string
			opts parallel.DataParallelOptions
		}{{"default", parallel.DataParallelOptions{}}, {"tiny", tiny}} {
			for _, mode := range []readyMode{readyInBackward, readyNever, readyShuffled, readySome} {
				t.Run(fmt.Sprintf("n=%d/%s/%v", n, buckets.name, mode), func(t *testing.T) {
					models := trainDDP(t, n, steps, buckets.opts, mode)
					for r, m := range models {
						require.NoError(t, testmodel.SameBits(m.Params, want.Params), "rank %d", r)
					}
				})
			}
		}
	}
	// The training moved the parameters: the comparison is not vacuous.
	require.Error(t, testmodel.SameBits(singleProcess(testmodel.HeadSizes(), 10, 12, false).Params, testmodel.New(testmodel.HeadSizes(), false).Params))
}

func TestBucketsHoldParametersInReverseOrder(t *testing.T) {
	comms := local(t, 1)
	m := testmodel.New(testmodel.HeadSizes(), false)
	dp := newDP(t, comms, [][]*parallel.Param{m.Params}, tiny)[0]
	// head4: b (1) + w (3) = 16 bytes, the first bucket's cap; then 64-byte
	// buckets; head3.w alone (4000 bytes).
	want := []parallel.BucketInfo{
		{Params: []string{"head4.b", "head4.w"}, Elements: 4},
		{Params: []string{"head3.b"}, Elements: 1},
		{Params: []string{"head3.w"}, Elements: 1000},
		{Params: []string{"head2.b"}, Elements: 1},
		{Params: []string{"head2.w"}, Elements: 33},
		{Params: []string{"head1.b", "head1.w", "head0.b", "head0.w"}, Elements: 10},
	}
	assert.Equal(t, want, dp.Buckets())

	big := testmodel.New(testmodel.HeadSizes(), false)
	dp = newDP(t, local(t, 1), [][]*parallel.Param{big.Params}, parallel.DataParallelOptions{})[0]
	require.Len(t, dp.Buckets(), 1, "1044 values fit the default first bucket")
}

// Gradients live in the buckets: each p.Grad is re-pointed, keeping the
// values it had, and Sync averages them in place.
func TestGradientsAreViewsIntoBucketsAndKeepTheirValues(t *testing.T) {
	const n = 3
	comms := local(t, n)
	params := make([][]*parallel.Param, n)
	before := make([][]float32, n)
	for r := range n {
		params[r] = []*parallel.Param{
			{Name: "a", Data: make([]float32, 5), Grad: []float32{1, 2, 3, 4, float32(r)}},
			{Name: "b", Data: make([]float32, 2)}, // no Grad: zeros
		}
		before[r] = params[r][0].Grad
	}
	dps := newDP(t, comms, params, tiny)
	testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
		p := params[r][0]
		if &p.Grad[0] == &before[r][0] {
			return fmt.Errorf("rank %d: Grad was not re-pointed", r)
		}
		if want := []float32{1, 2, 3, 4, float32(r)}; fmt.Sprint(p.Grad) != fmt.Sprint(want) {
			return fmt.Errorf("rank %d: Grad %v, want %v", r, p.Grad, want)
		}
		if fmt.Sprint(params[r][1].Grad) != "[0 0]" {
			return fmt.Errorf("rank %d: b.Grad %v", r, params[r][1].Grad)
		}
		params[r][1].Grad[1] = float32(3 * r)
		return dps[r].Sync(ctx)
	}))
	for r := range n {
		assert.Equal(t, []float32{1, 2, 3, 4, 1}, params[r][0].Grad, "rank %d", r) // (0+1+2)/3
		assert.Equal(t, []float32{0, 3}, params[r][1].Grad, "rank %d", r)
	}
}

// Unused parameters: ranks mark different subsets ready, some none, and a
// parameter's gradient is zero on the ranks that do not use it; every
// average is exact and no rank hangs.
func TestUnusedParametersAreAveragedWithTheirCurrentGradients(t *testing.T) {
	const n, steps = 4, 5
	comms := local(t, n)
	params := make([][]*parallel.Param, n)
	for r := range n {
		for i, size := range []int{3, 1, 17, 2, 9} {
			params[r] = append(params[r], &parallel.Param{Name: fmt.Sprint("p", i), Data: make([]float32, size)})
		}
	}
	dps := newDP(t, comms, params, tiny)
	// used: rank r uses parameter i at step s if (i+r+s)%3 != 0; rank 0 marks none.
	used := func(r, i, s int) bool { return (i+r+s)%3 != 0 }
	grad := func(r, i, j, s int) float32 { return float32((r+1)*(i+2) + j + s) }
	for s := range steps {
		testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
			for i := len(params[r]) - 1; i >= 0; i-- {
				p := params[r][i]
				for j := range p.Grad {
					p.Grad[j] = 0
					if used(r, i, s) {
						p.Grad[j] = grad(r, i, j, s)
					}
				}
				if r != 0 && used(r, i, s) {
					dps[r].Ready(p)
				}
			}
			return dps[r].Sync(ctx)
		}))
		for i := range params[0] {
			for j := range params[0][i].Grad {
				var sum float32
				for r := range n {
					if used(r, i, s) {
						sum += grad(r, i, j, s)
					}
				}
				for r := range n {
					require.Equal(t, sum/n, params[r][i].Grad[j], "step %d rank %d p%d[%d]", s, r, i, j)
				}
			}
		}
	}
}

// SetSync(false) accumulates: k micro-batches, each loss scaled by 1/k, then
// a synchronised step, give bitwise the parameters of one process on a k
// times larger global batch. Both ways to turn synchronisation off, and
// Ready during the last micro-batch (its buckets start early, with the sum
// added), are covered.
func TestAccumulationEqualsTheLargerBatchBitwise(t *testing.T) {
	const k, steps = 4, 6
	for n := 1; n <= 4; n++ {
		for _, noSync := range []bool{false, true} {
			t.Run(fmt.Sprintf("n=%d/NoSync=%v", n, noSync), func(t *testing.T) {
				want := singleProcess(testmodel.HeadSizes(), steps, k*n*perRank, false)
				comms := local(t, n)
				models := make([]*testmodel.Model, n)
				params := make([][]*parallel.Param, n)
				for r := range n {
					models[r] = testmodel.New(testmodel.HeadSizes(), r != 0)
					params[r] = models[r].Params
				}
				dps := newDP(t, comms, params, tiny)
				testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
					m, dp := models[r], dps[r]
					// Micro-batch i of a step is the i-th quarter of the
					// global batch; rank r takes its r-th share of it.
					from := func(step, i int) int { return step*k*n*perRank + i*n*perRank + r*perRank }
					for step := range steps {
						accumulate := func() error {
							for i := range k - 1 {
								m.Backward(from(step, i), perRank, 1.0/k, dp.Ready)
								if err := dp.Sync(ctx); err != nil {
									return err
								}
							}
							return nil
						}
						var err error
						if noSync {
							err = dp.NoSync(accumulate)
						} else {
							dp.SetSync(false)
							err = accumulate()
							dp.SetSync(true)
						}
						if err != nil {
							return err
						}
						m.Backward(from(step, k-1), perRank, 1.0/k, dp.Ready)
						if err := dp.Sync(ctx); err != nil {
							return err
						}
						sgd(m.Params)
					}
					return nil
				}))
				for r, m := range models {
					require.NoError(t, testmodel.SameBits(m.Params, want.Params), "rank %d", r)
				}
			})
		}
	}
}

// Compression "bf16" reduces the buckets in bf16 over a communicator made
// without compression: the averages are close to the exact ones, not equal.
func TestCompressionReducesGradientsInBF16(t *testing.T) {
	const n, size = 3, 5000
	comms := localConfig(t, n, collective.Config{Algorithm: "ring"})
	params := make([][]*parallel.Param, n)
	value := func(r, j int) float32 { return 1 + float32(j%101)/1024 + float32(r)/3 }
	for r := range n {
		params[r] = []*parallel.Param{{Name: "w", Data: make([]float32, size), Grad: make([]float32, size)}}
		for j := range size {
			params[r][0].Grad[j] = value(r, j)
		}
	}
	dps := newDP(t, comms, params, parallel.DataParallelOptions{Compression: "bf16"})
	testjob.RequireAllOK(t, testjob.Each(n, func(r int) error { return dps[r].Sync(ctx) }))
	inexact := 0
	for j := range size {
		var exact float32
		for r := range n {
			exact += value(r, j)
		}
		exact /= n
		got := params[0][0].Grad[j]
		require.InEpsilon(t, exact, got, 1.0/64, "[%d]", j)
		if got != exact {
			inexact++
		}
		for r := 1; r < n; r++ {
			require.Equal(t, math.Float32bits(got), math.Float32bits(params[r][0].Grad[j]), "rank %d [%d]", r, j)
		}
	}
	assert.Greater(t, inexact, size/2, "bf16 rounds these values")
}

// A steady-state step (Ready for every parameter, then Sync) allocates
// nothing, in DataParallel or in the collectives under it.
func TestSteadyStateStepAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, opts := range []parallel.DataParallelOptions{{}, tiny, {Compression: "bf16"}} {
		t.Run(fmt.Sprintf("%+v", opts), func(t *testing.T) {
			const n = 3
			comms := local(t, n)
			models := make([]*testmodel.Model, n)
			params := make([][]*parallel.Param, n)
			for r := range n {
				models[r] = testmodel.New(testmodel.HeadSizes(), false)
				params[r] = models[r].Params
			}
			dps := newDP(t, comms, params, opts)
			step := func(r int) error {
				ps := models[r].Params
				for i := len(ps) - 1; i >= 0; i-- {
					dps[r].Ready(ps[i])
				}
				return dps[r].Sync(ctx)
			}
			testjob.NewDriver(t, n, step).RequireNoAllocs(t, "step")
		})
	}
}

// The first synchronised step reports, at debug level, the parameters it
// never saw ready; later steps say nothing.
func TestFirstStepLogsParametersNeverMarkedReady(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := testmodel.New(testmodel.HeadSizes(), false)
	dp := newDP(t, local(t, 1), [][]*parallel.Param{m.Params}, parallel.DataParallelOptions{Logger: log})[0]
	for range 2 {
		dp.Ready(m.Params[0])
		dp.Ready(m.Params[3])
		require.NoError(t, dp.Sync(ctx))
	}
	out := buf.String()
	assert.Equal(t, 1, bytes.Count(buf.Bytes(), []byte("never marked ready")), out)
	assert.Contains(t, out, "count=8")
	assert.Contains(t, out, "head0.b")
	assert.Contains(t, out, "head4.w")
	assert.NotContains(t, out, "head0.w")
	assert.NotContains(t, out, "head1.b")
}

// A Sync with synchronisation off moves the gradients into the sum and
// leaves zeros: a backward that adds into p.Grad works as well as one that
// overwrites it.
func TestUnsynchronisedSyncLeavesZeroGradients(t *testing.T) {
	const n = 2
	comms := local(t, n)
	lists := [][]*parallel.Param{params("a", 3), params("a", 3)}
	dps := newDP(t, comms, lists, tiny)
	testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
		g := lists[r][0].Grad
		return dps[r].NoSync(func() error {
			for k := range 2 {
				for j := range g {
					g[j] += float32(r + j + k) // adds, as torch's backward does
				}
				if err := dps[r].Sync(ctx); err != nil {
					return err
				}
				if fmt.Sprint(g) != "[0 0 0]" {
					return fmt.Errorf("rank %d: gradients %v after an unsynchronised Sync", r, g)
				}
			}
			return nil
		})
	}))
	testjob.RequireAllOK(t, testjob.Each(n, func(r int) error { return dps[r].Sync(ctx) })) // no backward: the sum alone
	for r := range n {
		// Σ_r Σ_k (r+j+k) / 2 = (1 + 2j + 1 + 2j + 2) / 2 = 2j + 2
		assert.Equal(t, []float32{2, 4, 6}, lists[r][0].Grad, "rank %d", r)
	}
}

// Without DataParallelOptions.Logger, the report goes to the
// communicator's logger: at debug level under RINGO_DEBUG.
func TestFirstStepReportGoesToTheCommunicatorsLogger(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	comms := localConfig(t, 1, collective.Config{Logger: log})
	m := testmodel.New(testmodel.HeadSizes(), false)
	dp := newDP(t, comms, [][]*parallel.Param{m.Params}, parallel.DataParallelOptions{})[0]
	require.NoError(t, dp.Sync(ctx))
	assert.Contains(t, buf.String(), "never marked ready")
	assert.Contains(t, buf.String(), "rank=0")
}
