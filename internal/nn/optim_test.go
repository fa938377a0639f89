package nn

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/parallel"
)

// steps applies opt to one element for each gradient in turn and returns
// the value after each step.
func steps(t *testing.T, opt Optimizer, w float32, grads ...float32) []float32 {
	t.Helper()
	data := []float32{w}
	state := make([]float32, opt.StateLen(1))
	var out []float32
	for s, g := range grads {
		require.NoError(t, opt.Update(s+1, data, []float32{g}, state))
		out = append(out, data[0])
	}
	return out
}

// The expected values are worked out by hand in the comments; the data are
// powers of two so SGD's are exact.
func TestSGDHandComputed(t *testing.T) {
	// w ← w − lr·g: 1 − 0.5·2 = 0, then 0 − 0.5·2 = −1.
	require.Equal(t, []float32{0, -1}, steps(t, &SGD{LR: 0.5}, 1, 2, 2))
	// weight decay: g' = 2 + 0.25·1 = 2.25, w = 1 − 1.125 = −0.125.
	require.Equal(t, []float32{-0.125}, steps(t, &SGD{LR: 0.5, WeightDecay: 0.25}, 1, 2))
	// momentum 0.5: v = 2, w = 0; v = 0.5·2 + 2 = 3, w = −1.5.
	require.Equal(t, []float32{0, -1.5}, steps(t, &SGD{LR: 0.5, Momentum: 0.5}, 1, 2, 2))
	// Nesterov: v = 2, d = 2 + 0.5·2 = 3, w = 1 − 1.5 = −0.5;
	// v = 3, d = 2 + 1.5 = 3.5, w = −0.5 − 1.75 = −2.25.
	require.Equal(t, []float32{-0.5, -2.25}, steps(t, &SGD{LR: 0.5, Momentum: 0.5, Nesterov: true}, 1, 2, 2))
	require.Empty(t, (&SGD{LR: 1}).StateNames())
	require.Zero(t, (&SGD{LR: 1}).StateLen(10))
	require.Equal(t, 10, (&SGD{LR: 1, Momentum: 0.9}).StateLen(10))
}

func TestAdamHandComputed(t *testing.T) {
	// β₁ = 0.5, β₂ = 0.75, ε = 0, lr = 0.1, w = 1.
	// Step 1, g = 2: m = 1, v = 1, bc1 = 0.5, bc2 = 0.25,
	//   w = 1 − (0.1/0.5)·1/(1/√0.25) = 1 − 0.2·0.5 = 0.9.
	// Step 2, g = −2: m = 0.5 − 1 = −0.5, v = 0.75 + 1 = 1.75,
	//   bc1 = 0.75, bc2 = 0.4375, √v/√bc2 = √4 = 2,
	//   w = 0.9 − (0.1/0.75)·(−0.5/2) = 0.9 + 1/30.
	adam := &Adam{LR: 0.1, Beta1: 0.5, Beta2: 0.75}
	require.InDeltaSlice(t, []float32{0.9, 0.9 + 1.0/30}, steps(t, adam, 1, 2, -2), 1e-7)
	// L2 weight decay 0.5 (Adam): g' = 2.5, m = 1.25, v = 1.5625,
	//   w = 1 − 0.2·1.25/(1.25·2) = 0.9 — the first step is lr/bc1·½ here too.
	require.InDeltaSlice(t, []float32{0.9}, steps(t, &Adam{LR: 0.1, Beta1: 0.5, Beta2: 0.75, WeightDecay: 0.5}, 1, 2), 1e-7)
	// Decoupled (AdamW): w = 1·(1 − 0.1·0.5) = 0.95, then 0.95 − 0.1 = 0.85.
	require.InDeltaSlice(t, []float32{0.85}, steps(t, &Adam{LR: 0.1, Beta1: 0.5, Beta2: 0.75, WeightDecay: 0.5, Decoupled: true}, 1, 2), 1e-7)
	// PyTorch's defaults: the first step moves every weight by lr·sign(g).
	require.InDeltaSlice(t, []float32{1 - 1e-3}, steps(t, NewAdam(1e-3), 1, 0.37), 1e-8)
	require.InDeltaSlice(t, []float32{1*(1-1e-3*0.01) + 1e-3}, steps(t, NewAdamW(1e-3, 0.01), 1, -5), 1e-8)
	require.Equal(t, []string{"exp_avg", "exp_avg_sq"}, adam.StateNames())
}

func TestUpdateRejectsBadInput(t *testing.T) {
	adam := NewAdam(0.1)
	require.ErrorContains(t, adam.Update(0, []float32{1}, []float32{1}, make([]float32, 2)), "steps count from 1")
	require.ErrorContains(t, adam.Update(1, []float32{1}, []float32{1, 2}, make([]float32, 2)), "2 gradients")
	require.ErrorContains(t, adam.Update(1, []float32{1}, []float32{1}, make([]float32, 1)), "want 2")
}

// TestShardedUpdatesAreBitwiseTheFullOne: every optimizer applied to shards
// of a flat vector, with StateRange's slices of the state, gives bitwise the
// result of applying it to the whole vector, step after step.
func TestShardedUpdatesAreBitwiseTheFullOne(t *testing.T) {
	opts := map[string]Optimizer{
		"sgd":      &SGD{LR: 0.1},
		"momentum": &SGD{LR: 0.1, Momentum: 0.9, WeightDecay: 1e-4, Nesterov: true},
		"adam":     &Adam{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 1e-2},
		"adamw":    NewAdamW(1e-3, 0.01),
	}
	for name, opt := range opts {
		t.Run(name, func(t *testing.T) {
			const n = 1001
			rng := rand.New(rand.NewPCG(7, 7))
			full := randSlice(rng, n)
			sharded := slices.Clone(full)
			fullState := make([]float32, opt.StateLen(n))
			shardState := make([]float32, opt.StateLen(n))
			bounds := []int{0, 1, 334, 700, 1001}
			for step := 1; step <= 5; step++ {
				grad := randSlice(rng, n)
				require.NoError(t, opt.Update(step, full, grad, fullState))
				for s := range len(bounds) - 1 {
					lo, hi := bounds[s], bounds[s+1]
					slo, shi := StateRange(opt, lo, hi)
					require.NoError(t, opt.Update(step, sharded[lo:hi], grad[lo:hi], shardState[slo:shi]))
				}
				require.Equal(t, full, sharded, "step %d", step)
				require.Equal(t, fullState, shardState, "step %d", step)
			}
		})
	}
}

func newTestParams(rng *rand.Rand, sizes ...int) []*parallel.Param {
	var ps []*parallel.Param
	for i, n := range sizes {
		ps = append(ps, &parallel.Param{Name: string(rune('a' + i)), Data: randSlice(rng, n), Grad: make([]float32, n)})
	}
	return ps
}

func cloneParams(ps []*parallel.Param) []*parallel.Param {
	var out []*parallel.Param
	for _, p := range ps {
		out = append(out, &parallel.Param{Name: p.Name, Data: slices.Clone(p.Data), Grad: slices.Clone(p.Grad)})
	}
	return out
}

// TestParamOptimizerIsTheFlatVector: stepping a list of parameters equals
// stepping their concatenation, and the state is laid out that way.
func TestParamOptimizerIsTheFlatVector(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 3))
	params := newTestParams(rng, 3, 1, 5)
	opt := NewAdam(0.01)
	po, err := NewParamOptimizer(opt, params)
	require.NoError(t, err)
	var flat []float32
	for _, p := range params {
		flat = append(flat, p.Data...)
	}
	state := make([]float32, opt.StateLen(len(flat)))
	for step := 1; step <= 3; step++ {
		var grad []float32
		for _, p := range params {
			copy(p.Grad, randSlice(rng, len(p.Grad)))
			grad = append(grad, p.Grad...)
		}
		require.NoError(t, po.Step())
		require.NoError(t, opt.Update(step, flat, grad, state))
	}
	var got []float32
	for _, p := range params {
		got = append(got, p.Data...)
	}
	require.Equal(t, flat, got)
	require.Equal(t, state, po.State())
	require.Equal(t, 3, po.Steps())
}

// TestOptimizerStateRoundTrip: a run that exports its state, and a fresh
// optimizer that loads it, continue bitwise identically.
func TestOptimizerStateRoundTrip(t *testing.T) {
	for _, opt := range []Optimizer{&SGD{LR: 0.1, Momentum: 0.9}, NewAdamW(0.01, 0.1)} {
		rng := rand.New(rand.NewPCG(2, 2))
		params := newTestParams(rng, 4, 2)
		po, err := NewParamOptimizer(opt, params)
		require.NoError(t, err)
		setGrads := func(ps []*parallel.Param, step int) {
			r := rand.New(rand.NewPCG(uint64(step), 0))
			for _, p := range ps {
				copy(p.Grad, randSlice(r, len(p.Grad)))
			}
		}
		for s := 1; s <= 3; s++ {
			setGrads(params, s)
			require.NoError(t, po.Step())
		}
		tensors := po.StateTensors()
		var names []string
		for _, tn := range tensors {
			names = append(names, tn.Name)
		}
		var want []string
		for _, p := range params {
			for _, k := range opt.StateNames() {
				want = append(want, p.Name+"."+k)
			}
		}
		require.Equal(t, want, names)
		// De-interleaved: tensor (param j, kind s) element i is state[k·(off_j+i)+s].
		k := len(opt.StateNames())
		require.Equal(t, po.State()[k*1+k-1], tensors[k-1].Data[1])

		resumed := cloneParams(params)
		po2, err := NewParamOptimizer(opt, resumed)
		require.NoError(t, err)
		require.NoError(t, po2.LoadState(po.Steps(), tensors))
		for s := 4; s <= 6; s++ {
			setGrads(params, s)
			setGrads(resumed, s)
			require.NoError(t, po.Step())
			require.NoError(t, po2.Step())
		}
		for j := range params {
			require.Equal(t, params[j].Data, resumed[j].Data)
		}
		require.Equal(t, po.State(), po2.State())

		require.ErrorContains(t, po2.LoadState(1, tensors[1:]), "lacks a whole tensor a.")
		bad := slices.Clone(tensors)
		bad[0] = checkpoint.Tensor{Name: bad[0].Name, Data: make([]float32, 3)}
		require.ErrorContains(t, po2.LoadState(1, bad), "has 3 values, want 4")
		bad[0] = checkpoint.Tensor{Name: bad[0].Name, Shape: []int{8}, Offset: 4, Data: make([]float32, 4)}
		require.ErrorContains(t, po2.LoadState(1, bad), "lacks a whole tensor a.")
		require.Equal(t, po.State(), po2.State(), "a failed load changes nothing")
		// Other tensors (a checkpoint's parameters) are ignored.
		require.NoError(t, po2.LoadState(3, append([]checkpoint.Tensor{{Name: "a", Data: []float32{1}}}, tensors...)))
		require.Equal(t, 3, po2.Steps())
	}
}

func TestParamOptimizerRejectsBadParams(t *testing.T) {
	_, err := NewParamOptimizer(nil, nil)
	require.Error(t, err)
	p := &parallel.Param{Name: "w", Data: make([]float32, 2), Grad: make([]float32, 2)}
	_, err = NewParamOptimizer(&SGD{LR: 1}, []*parallel.Param{p, p})
	require.ErrorContains(t, err, `two parameters are named "w"`)
	q := &parallel.Param{Name: "q", Data: make([]float32, 2), Grad: make([]float32, 1)}
	po, err := NewParamOptimizer(&SGD{LR: 1}, []*parallel.Param{q})
	require.NoError(t, err)
	require.ErrorContains(t, po.Step(), "parameter q")
	require.Zero(t, po.Steps())
}
