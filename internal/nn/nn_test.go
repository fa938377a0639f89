package nn

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/parallel"
)

// refLoss is the summed softmax cross-entropy of an MLP (Linear, ReLU, ...,
// Linear) in float64, from its parameters (fcK.weight, fcK.bias in order)
// and an input in float64: the reference finite differences run on.
func refLoss(params [][]float64, sizes []int, x []float64, batch int, labels []int32) float64 {
	h := x
	for l := range len(sizes) - 1 {
		in, out := sizes[l], sizes[l+1]
		w, b := params[2*l], params[2*l+1]
		y := make([]float64, batch*out)
		for r := range batch {
			for j := range out {
				s := b[j]
				for i := range in {
					s += h[r*in+i] * w[j*in+i]
				}
				if l < len(sizes)-2 {
					s = max(s, 0)
				}
				y[r*out+j] = s
			}
		}
		h = y
	}
	c := sizes[len(sizes)-1]
	total := 0.0
	for r, y := range labels {
		z := h[r*c : (r+1)*c]
		zmax := slices.Max(z)
		sum := 0.0
		for _, v := range z {
			sum += math.Exp(v - zmax)
		}
		total += math.Log(sum) - (z[y] - zmax)
	}
	return total
}

func to64(s []float32) []float64 {
	out := make([]float64, len(s))
	for i, v := range s {
		out[i] = float64(v)
	}
	return out
}

func randomBatch(rng *rand.Rand, batch, in, classes int) ([]float32, []int32) {
	x := randSlice(rng, batch*in)
	labels := make([]int32, batch)
	for i := range labels {
		labels[i] = int32(rng.IntN(classes))
	}
	return x, labels
}

// forwardBackward runs one step of the MLP on a batch with the given loss
// scale and returns the summed loss.
func forwardBackward(t *testing.T, m *Sequential, ce *SoftmaxCrossEntropy, x []float32, labels []int32, scale float32, ready func(*parallel.Param)) float64 {
	t.Helper()
	logits, err := m.Forward(x, len(labels))
	require.NoError(t, err)
	loss, err := ce.Forward(logits, labels, scale)
	require.NoError(t, err)
	_, err = m.Backward(ce.Grad(), ready)
	require.NoError(t, err)
	return loss
}

// TestMLPGradientsMatchFiniteDifferences checks every parameter's gradient,
// and the input's, against central differences of the float64 reference.
func TestMLPGradientsMatchFiniteDifferences(t *testing.T) {
	sizes := []int{7, 6, 5, 4}
	const batch = 5
	m, err := NewMLP(sizes, 11)
	require.NoError(t, err)
	m.InputGrad = true
	ce, err := NewSoftmaxCrossEntropy(sizes[len(sizes)-1])
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(5, 6))
	x, labels := randomBatch(rng, batch, sizes[0], sizes[len(sizes)-1])

	const scale = 0.5 // gradients are of scale·Σ loss
	logits, err := m.Forward(x, batch)
	require.NoError(t, err)
	loss, err := ce.Forward(logits, labels, scale)
	require.NoError(t, err)
	dx, err := m.Backward(ce.Grad(), nil)
	require.NoError(t, err)

	params := make([][]float64, len(m.Params()))
	for j, p := range m.Params() {
		params[j] = to64(p.Data)
	}
	x64 := to64(x)
	require.InDelta(t, refLoss(params, sizes, x64, batch, labels), loss, 1e-5)

	const h = 1e-6
	numeric := func(v []float64, i int) float64 {
		old := v[i]
		v[i] = old + h
		up := refLoss(params, sizes, x64, batch, labels)
		v[i] = old - h
		down := refLoss(params, sizes, x64, batch, labels)
		v[i] = old
		return scale * (up - down) / (2 * h)
	}
	for j, p := range m.Params() {
		for i := range p.Data {
			require.InDelta(t, numeric(params[j], i), float64(p.Grad[i]), 2e-5, "%s[%d]", p.Name, i)
		}
	}
	require.Len(t, dx, len(x))
	for i := range x {
		require.InDelta(t, numeric(x64, i), float64(dx[i]), 2e-5, "input[%d]", i)
	}
}

// TestBackwardReadyOrderAndFinality: the hook sees every parameter once,
// last layer first, and its gradient at that moment is its final value.
func TestBackwardReadyOrderAndFinality(t *testing.T) {
	sizes := []int{9, 8, 7, 3}
	m, err := NewMLP(sizes, 1)
	require.NoError(t, err)
	ce, err := NewSoftmaxCrossEntropy(3)
	require.NoError(t, err)
	x, labels := randomBatch(rand.New(rand.NewPCG(1, 1)), 4, 9, 3)
	var order []string
	atReady := map[string][]float32{}
	forwardBackward(t, m, ce, x, labels, 0.25, func(p *parallel.Param) {
		order = append(order, p.Name)
		atReady[p.Name] = slices.Clone(p.Grad)
	})
	require.Equal(t, []string{"fc2.weight", "fc2.bias", "fc1.weight", "fc1.bias", "fc0.weight", "fc0.bias"}, order)
	for _, p := range m.Params() {
		require.Equal(t, p.Grad, atReady[p.Name], p.Name)
	}
}

// TestGradientsAccumulate: with exactly representable data (small integers
// and powers of two), two backward passes over two halves of a batch add up
// bitwise to one pass over the whole batch, and ZeroGrad starts over.
func TestGradientsAccumulate(t *testing.T) {
	const in, out, batch = 5, 3, 4
	lin, err := NewLinear("fc", in, out, rand.New(rand.NewPCG(0, 0)))
	require.NoError(t, err)
	for i := range lin.Weight.Data {
		lin.Weight.Data[i] = float32(i%5 - 2)
	}
	x := make([]float32, batch*in)
	dy := make([]float32, batch*out)
	for i := range x {
		x[i] = float32(i%7 - 3)
	}
	for i := range dy {
		dy[i] = float32(i%3-1) * 0.25
	}
	run := func(rows []int) {
		for _, r := range rows {
			_, err := lin.Forward(x[r*in:(r+1)*in], 1)
			require.NoError(t, err)
			_, err = lin.Backward(dy[r*out:(r+1)*out], false, nil)
			require.NoError(t, err)
		}
	}
	_, err = lin.Forward(x, batch)
	require.NoError(t, err)
	_, err = lin.Backward(dy, false, nil)
	require.NoError(t, err)
	wantW, wantB := slices.Clone(lin.Weight.Grad), slices.Clone(lin.Bias.Grad)
	require.NotEqual(t, make([]float32, len(wantW)), wantW)

	clear(lin.Weight.Grad)
	clear(lin.Bias.Grad)
	run([]int{0, 1, 2, 3})
	require.Equal(t, wantW, lin.Weight.Grad)
	require.Equal(t, wantB, lin.Bias.Grad)

	run([]int{0, 1, 2, 3}) // a second pass doubles them
	for i := range wantW {
		require.Equal(t, 2*wantW[i], lin.Weight.Grad[i])
	}

	s, err := NewSequential(lin)
	require.NoError(t, err)
	s.ZeroGrad()
	require.Equal(t, make([]float32, len(wantW)), lin.Weight.Grad)
	require.Equal(t, make([]float32, out), lin.Bias.Grad)
}

// TestGlobalMeanScaleMakesUnevenSplitsExact: a global batch split 3+1+0
// over three "ranks", each scaling by N/B, averaged over the ranks, gives the
// one-process gradient of the batch mean (up to rounding).
func TestGlobalMeanScaleMakesUnevenSplitsExact(t *testing.T) {
	sizes := []int{6, 5, 4}
	const batch, ranks = 4, 3
	x, labels := randomBatch(rand.New(rand.NewPCG(9, 9)), batch, 6, 4)
	single, err := NewMLP(sizes, 3)
	require.NoError(t, err)
	ce, err := NewSoftmaxCrossEntropy(4)
	require.NoError(t, err)
	forwardBackward(t, single, ce, x, labels, 1.0/batch, nil)

	avg := make([][]float64, len(single.Params()))
	for j, p := range single.Params() {
		avg[j] = make([]float64, len(p.Data))
	}
	bounds := []int{0, 3, 4, 4} // rank 2 gets nothing
	for r := range ranks {
		m, err := NewMLP(sizes, 3)
		require.NoError(t, err)
		lo, hi := bounds[r], bounds[r+1]
		forwardBackward(t, m, ce, x[lo*6:hi*6], labels[lo:hi], GlobalMeanScale(batch, ranks), nil)
		for j, p := range m.Params() {
			for i, g := range p.Grad {
				avg[j][i] += float64(g) / ranks
			}
		}
	}
	for j, p := range single.Params() {
		for i, g := range p.Grad {
			require.InDelta(t, float64(g), avg[j][i], 1e-6, "%s[%d]", p.Name, i)
		}
	}
}

func TestSoftmaxCrossEntropy(t *testing.T) {
	ce, err := NewSoftmaxCrossEntropy(3)
	require.NoError(t, err)
	// Equal logits: loss log 3 per row; gradient (1/3 − onehot)·scale.
	loss, err := ce.Forward([]float32{5, 5, 5, 0, 0, 0}, []int32{0, 2}, 0.5)
	require.NoError(t, err)
	require.InDelta(t, 2*math.Log(3), loss, 1e-12)
	want := []float32{1.0/6 - 0.5, 1.0 / 6, 1.0 / 6, 1.0 / 6, 1.0 / 6, 1.0/6 - 0.5}
	require.InDeltaSlice(t, want, ce.Grad(), 1e-7)
	// Huge logits do not overflow.
	loss, err = ce.Forward([]float32{1000, 0, -1000}, []int32{1}, 1)
	require.NoError(t, err)
	require.InDelta(t, 1000.0, loss, 1e-9)

	_, err = ce.Forward([]float32{1, 2, 3}, []int32{3}, 1)
	require.ErrorContains(t, err, "label 3 of row 0")
	_, err = ce.Forward([]float32{1, 2, 3}, []int32{0, 1}, 1)
	require.ErrorContains(t, err, "3 logits for 2 labels")
	_, err = NewSoftmaxCrossEntropy(0)
	require.Error(t, err)

	require.Equal(t, 2, CountCorrect([]float32{1, 3, 2, 7, 0, 0, 1, 1, 0}, []int32{1, 0, 1}, 3)) // ties go to the first
}

func TestMLPBuilderIsDeterministic(t *testing.T) {
	a, err := NewMLP([]int{784, 256, 256, 10}, 42)
	require.NoError(t, err)
	b, err := NewMLP([]int{784, 256, 256, 10}, 42)
	require.NoError(t, err)
	c, err := NewMLP([]int{784, 256, 256, 10}, 43)
	require.NoError(t, err)
	require.Equal(t, 784*256+256+256*256+256+256*10+10, a.NumParams())
	var names []string
	for j, p := range a.Params() {
		names = append(names, p.Name)
		require.Equal(t, p.Data, b.Params()[j].Data)
		require.NotEqual(t, p.Data, c.Params()[j].Data)
		fanIn := []int{784, 256, 256}[j/2]
		bound := float32(1 / math.Sqrt(float64(fanIn)))
		largest := float32(0)
		for _, v := range p.Data {
			largest = max(largest, float32(math.Abs(float64(v))))
		}
		require.LessOrEqual(t, largest, bound, p.Name)
		require.Greater(t, largest, bound*0.9, "%s: uniform over the whole ±1/√fan-in", p.Name)
	}
	require.Equal(t, []string{"fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}, names)
}

func TestBadShapesAreErrors(t *testing.T) {
	_, err := NewMLP([]int{3}, 1)
	require.Error(t, err)
	_, err = NewMLP([]int{3, 0, 2}, 1)
	require.Error(t, err)
	m, err := NewMLP([]int{3, 4, 2}, 1)
	require.NoError(t, err)
	_, err = m.Forward(make([]float32, 7), 2)
	require.ErrorContains(t, err, "fc0.weight forward: 7 values for a batch of 2 rows of 3")
	_, err = m.Forward(make([]float32, 6), 2)
	require.NoError(t, err)
	_, err = m.Backward(make([]float32, 3), nil)
	require.ErrorContains(t, err, "backward")
	// A training API that re-points a gradient to the wrong length is
	// caught by backward, which writes it; forward reads only the values.
	x := []float32{1, 2, 3, -1, 0.5, 4}
	want, err := m.Forward(x, 2)
	require.NoError(t, err)
	want = append([]float32(nil), want...)
	m.Params()[0].Grad = make([]float32, 5)
	_, err = m.Forward(x, 2)
	require.NoError(t, err)
	_, err = m.Backward(make([]float32, 4), nil)
	require.ErrorContains(t, err, "fc0.weight has 12 values and 5 gradients")
	// Gradients unbound (nil), as sharded training leaves them in forward:
	// the same output; backward refuses.
	for _, p := range m.Params() {
		p.Grad = nil
	}
	got, err := m.Forward(x, 2)
	require.NoError(t, err)
	require.Equal(t, want, got)
	_, err = m.Backward(make([]float32, 4), nil)
	require.ErrorContains(t, err, "gradients, want")
	// Values of the wrong length are caught by forward too.
	m.Params()[1].Data = make([]float32, 3)
	_, err = m.Forward(x, 2)
	require.ErrorContains(t, err, "fc0.bias has 3 values and 0 gradients, want 4")
	r, err := NewReLU(2)
	require.NoError(t, err)
	_, err = NewSequential(m.Layers[0], r)
	require.ErrorContains(t, err, "layer 0 gives 4 features but layer 1 takes 2")
}

// TestEmptyBatch: a rank whose share of the last global batch is empty still
// runs the step (and marks every gradient ready) without changing them.
func TestEmptyBatch(t *testing.T) {
	m, err := NewMLP([]int{3, 4, 2}, 1)
	require.NoError(t, err)
	ce, err := NewSoftmaxCrossEntropy(2)
	require.NoError(t, err)
	ready := 0
	loss := forwardBackward(t, m, ce, nil, nil, 1, func(*parallel.Param) { ready++ })
	require.Zero(t, loss)
	require.Equal(t, 4, ready)
	for _, p := range m.Params() {
		require.Equal(t, make([]float32, len(p.Grad)), p.Grad)
	}
}

// TestTrainingStepAllocatesNothing: after a warm-up step, forward, loss,
// backward with a hook, and an optimizer step allocate nothing, for a batch
// larger than a gemm tile as well as a small one.
func TestTrainingStepAllocatesNothing(t *testing.T) {
	for _, batch := range []int{16, 100} {
		m, err := NewMLP([]int{784, 256, 256, 10}, 1)
		require.NoError(t, err)
		ce, err := NewSoftmaxCrossEntropy(10)
		require.NoError(t, err)
		for _, opt := range []Optimizer{&SGD{LR: 0.1, Momentum: 0.9}, NewAdamW(1e-3, 0.01)} {
			po, err := NewParamOptimizer(opt, m.Params())
			require.NoError(t, err)
			x, labels := randomBatch(rand.New(rand.NewPCG(1, 2)), batch, 784, 10)
			readies := 0
			ready := func(*parallel.Param) { readies++ }
			step := func() {
				m.ZeroGrad()
				forwardBackward(t, m, ce, x, labels, 1/float32(batch), ready)
				require.NoError(t, po.Step())
			}
			step()
			require.Zero(t, testing.AllocsPerRun(3, step), "batch %d", batch)
		}
	}
}
