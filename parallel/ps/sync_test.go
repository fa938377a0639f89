package ps_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/internal/testmodel"
	"github.com/ringo-ml/ringo/parallel/ps"
)

// perWorker is each worker's share of a global batch (a power of two, so
// the mean gradient is exact).
const perWorker = 4

var optimizers = []struct {
	name string
	new  func() nn.Optimizer
}{
	{"sgd-momentum", func() nn.Optimizer { return &nn.SGD{LR: 0.125, Momentum: 0.5} }},
	{"adam", func() nn.Optimizer { return nn.NewAdam(0.01) }},
}

// trainDP is the reference: W ranks of parallel.DataParallel, each taking
// the optimizer step itself on the averaged gradients.
func trainDP(t *testing.T, W, steps int, newOpt func() nn.Optimizer) []*parallel.Param {
	t.Helper()
	comms := local(t, W)
	models := make([]*testmodel.Model, W)
	testjob.RequireAllOK(t, testjob.Each(W, func(r int) error {
		m := testmodel.New(testmodel.HeadSizes(), r != 0)
		models[r] = m
		dp, err := parallel.NewDataParallel(ctx, comms[r], m.Params, parallel.DataParallelOptions{})
		if err != nil {
			return err
		}
		defer dp.Close()
		opt, err := nn.NewParamOptimizer(newOpt(), m.Params)
		if err != nil {
			return err
		}
		for step := range steps {
			m.Backward((step*W+r)*perWorker, perWorker, 1, nil)
			if err := dp.Sync(ctx); err != nil {
				return err
			}
			if err := opt.Step(); err != nil {
				return err
			}
		}
		return nil
	}))
	for r := 1; r < W; r++ {
		require.NoError(t, testmodel.SameBits(models[r].Params, models[0].Params), "DataParallel rank %d", r)
	}
	return models[0].Params
}

// trainPS trains the same way with S servers and W workers under Sync.
func trainPS(t *testing.T, S, W, steps, chunkBytes int, newOpt func() nn.Optimizer, push func(*ps.Worker) error) *job {
	t.Helper()
	j := startJob(t, S, W, ps.Options{Consistency: ps.Sync, Optimizer: newOpt(), ChunkBytes: chunkBytes}, func(w int) *testmodel.Model {
		return testmodel.New(testmodel.HeadSizes(), w != 0) // the first worker's values must reach everyone
	})
	testjob.RequireAllOK(t, testjob.Each(W, func(w int) error {
		for step := range steps {
			j.models[w].Backward((step*W+w)*perWorker, perWorker, 1, nil)
			if err := push(j.workers[w]); err != nil {
				return err
			}
		}
		return nil
	}))
	return j
}

// Sync training with S servers and W workers leaves every worker with
// bitwise the parameters DataParallel on W ranks computes, for SGD with
// momentum and for Adam, however the model is sliced (one server holds
// all, or three split the big parameter) and chunked (one chunk per
// server, chunks of 61 values, of 17), with PushPull or with Push then Pull.
func TestSyncEqualsDataParallelBitwise(t *testing.T) {
	const steps = 6
	pushPull := func(w *ps.Worker) error { return w.PushPull(ctx).Wait() }
	pushThenPull := func(w *ps.Worker) error {
		if err := w.Push(ctx).Wait(); err != nil {
			return err
		}
		return w.Pull(ctx).Wait()
	}
	for _, opt := range optimizers {
		for W := 1; W <= 3; W++ {
			want := trainDP(t, W, steps, opt.new)
			for S := 1; S <= 3; S++ {
				for i, push := range []func(*ps.Worker) error{pushPull, pushThenPull} {
					chunk := []int{0, 61 * 4, 17 * 4}[(S+W+i)%3]
					t.Run(fmt.Sprintf("%s/S=%d/W=%d/%d/chunk=%d", opt.name, S, W, i, chunk), func(t *testing.T) {
						j := trainPS(t, S, W, steps, chunk, opt.new, push)
						for w, m := range j.models {
							require.NoError(t, testmodel.SameBits(m.Params, want), "worker %d", w)
						}
						for w, wk := range j.workers {
							assert.Equal(t, steps, wk.Clock())
							// As the servers last said: an answer's header
							// leaves when its first chunk may, perhaps
							// before the last chunks of the others' pushes.
							for v, c := range wk.Status().Clocks {
								assert.Contains(t, []int{steps - 1, steps}, c, "worker %d's view of worker %d", w, v)
							}
						}
						for s, err := range j.finish() {
							require.NoError(t, err, "server %d", s)
						}
						// Once Serve has returned, every push is counted.
						for s, srv := range j.servers {
							st := srv.Status()
							assert.Equal(t, steps, st.Updates, "server %d", s)
							assert.Equal(t, repeat(steps, W), st.Clocks, "server %d", s)
							assert.Equal(t, []int{0, 1, 2}[:W], st.Finished, "server %d", s)
						}
					})
				}
			}
		}
		// The training moved the parameters: the comparison is not vacuous.
		require.Error(t, testmodel.SameBits(trainDP(t, 2, steps, opt.new), testmodel.New(testmodel.HeadSizes(), false).Params))
	}
}

func repeat(v, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = v
	}
	return out
}

// The servers together hold exactly the workers' final values, each its
// own slice as Layout says.
func TestServersHoldTheirSlices(t *testing.T) {
	const S, W = 3, 2
	j := trainPS(t, S, W, 3, 40, optimizers[0].new, func(w *ps.Worker) error { return w.PushPull(ctx).Wait() })
	want := j.models[0].Params
	for s, srv := range j.servers {
		var vals []float32
		n := 0
		for _, sl := range ps.Layout(want, S) {
			if sl.Server == s {
				vals = append(vals, want[sl.Index].Data[sl.Lo:sl.Hi]...)
				n += sl.Hi - sl.Lo
			}
		}
		got := make([]float32, n+1)
		require.Equal(t, n, srv.Values(got), "server %d", s)
		require.Equal(t, vals, got[:n], "server %d", s)
	}
	for s, err := range j.finish() {
		require.NoError(t, err, "server %d", s)
	}
}

func TestLayoutBalancesAndCoversEveryElementOnce(t *testing.T) {
	params := testmodel.New(testmodel.HeadSizes(), false).Params // 1048 elements
	total := 0
	for _, p := range params {
		total += len(p.Data)
	}
	for S := 1; S <= 7; S++ {
		seen := make([][]int, len(params))
		for i, p := range params {
			seen[i] = make([]int, len(p.Data))
		}
		held := make([]int, S)
		for _, sl := range ps.Layout(params, S) {
			require.Equal(t, params[sl.Index].Name, sl.Param)
			require.Less(t, sl.Lo, sl.Hi)
			require.Equal(t, held[sl.Server], sl.Offset, "S=%d: a server's slices lie end to end", S)
			held[sl.Server] += sl.Hi - sl.Lo
			for e := sl.Lo; e < sl.Hi; e++ {
				seen[sl.Index][e]++
			}
		}
		for i := range seen {
			for e, n := range seen[i] {
				require.Equal(t, 1, n, "S=%d: %s[%d]", S, params[i].Name, e)
			}
		}
		for s, n := range held {
			assert.InDelta(t, float64(total)/float64(S), n, 1, "S=%d server %d", S, s)
		}
	}
	// The big parameter is split across servers; small ones whole.
	byParam := map[string]int{}
	for _, sl := range ps.Layout(params, 3) {
		byParam[sl.Param]++
	}
	assert.Equal(t, 3, byParam["head3.w"])
	assert.Equal(t, 1, byParam["head0.w"])
}
