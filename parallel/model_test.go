package parallel_test

import (
	"fmt"
	"math"

	"github.com/ringo-ml/ringo/parallel"
)

// The test model: independent linear heads fitted with an L1 loss. Head h
// predicts w_h·x + b_h from its own features; the gradient of |pred - t| is
// sign(pred - t)·x, so every per-sample gradient is a small integer whatever
// the weights have become, and a batch's gradient (a sum of them, divided
// by a power of two) is exact. Data parallel training and one process on the
// global batch must then agree bitwise: the ranks' averages differ from the
// single process's mean only in the order of exact additions, and the one
// rounding (dividing by N = 3) rounds the same real number on both sides.
type model struct {
	sizes  []int // weights per head
	params []*parallel.Param
}

// headSizes: odd sizes, a single weight, and a head bigger than the tiny
// buckets the tests use.
var headSizes = []int{1, 7, 33, 1000, 3}

// newModel makes the model with its initial values; junk gives every value
// 99 instead (ranks other than 0 start from junk: NewDataParallel must copy
// rank 0's values).
func newModel(sizes []int, junk bool) *model {
	m := &model{sizes: sizes}
	for h, n := range sizes {
		w := &parallel.Param{Name: fmt.Sprintf("head%d.w", h), Data: make([]float32, n), Grad: make([]float32, n)}
		b := &parallel.Param{Name: fmt.Sprintf("head%d.b", h), Data: make([]float32, 1), Grad: make([]float32, 1)}
		for j := range w.Data {
			w.Data[j] = float32((j*5+h)%9-4) / 4
			if junk {
				w.Data[j] = 99
			}
		}
		if junk {
			b.Data[0] = 99
		}
		m.params = append(m.params, w, b)
	}
	return m
}

// feature and target of global sample s: small integers.
func feature(s, h, j int) float32 { return float32((s*7+h*3+j*5)%7 - 3) }
func target(s, h int) float32     { return float32((s*11+h)%9 - 4) }

// backward writes into each p.Grad the mean gradient over the samples
// [from, from+count) (count a power of two), scaled by scale (a power of
// two), head by head from the last, calling ready(p) as each is final
// (ready may be nil).
func (m *model) backward(from, count int, scale float32, ready func(*parallel.Param)) {
	for h := len(m.sizes) - 1; h >= 0; h-- {
		m.headBackward(h, from, count, scale)
		if ready != nil {
			ready(m.params[2*h])
			ready(m.params[2*h+1])
		}
	}
}

func (m *model) headBackward(h, from, count int, scale float32) {
	w, b := m.params[2*h], m.params[2*h+1]
	for j := range w.Grad {
		w.Grad[j] = 0
	}
	b.Grad[0] = 0
	for s := from; s < from+count; s++ {
		pred := b.Data[0]
		for j, wj := range w.Data {
			pred += wj * feature(s, h, j)
		}
		var e float32
		switch t := target(s, h); {
		case pred > t:
			e = 1
		case pred < t:
			e = -1
		}
		for j := range w.Grad {
			w.Grad[j] += e * feature(s, h, j)
		}
		b.Grad[0] += e
	}
	for j := range w.Grad {
		w.Grad[j] = w.Grad[j] / float32(count) * scale
	}
	b.Grad[0] = b.Grad[0] / float32(count) * scale
}

const lr = 0.125

// sgd is plain gradient descent.
func sgd(params []*parallel.Param) {
	for _, p := range params {
		for j, g := range p.Grad {
			p.Data[j] -= lr * g
		}
	}
}

// momentum is SGD with momentum (PyTorch's form: v = μv + g; w -= lr·v),
// the optimizer whose state the checkpoint tests save and restore.
type momentum struct {
	v [][]float32
}

func newMomentum(params []*parallel.Param) *momentum {
	o := &momentum{}
	for _, p := range params {
		o.v = append(o.v, make([]float32, len(p.Data)))
	}
	return o
}

func (o *momentum) step(params []*parallel.Param) {
	for i, p := range params {
		for j, g := range p.Grad {
			o.v[i][j] = 0.5*o.v[i][j] + g
			p.Data[j] -= lr * o.v[i][j]
		}
	}
}

// singleProcess trains the model on one process: steps of the global batch
// (batch samples), with momentum if mom.
func singleProcess(sizes []int, steps, batch int, mom bool) *model {
	m := newModel(sizes, false)
	o := newMomentum(m.params)
	for step := range steps {
		m.backward(step*batch, batch, 1, nil)
		if mom {
			o.step(m.params)
		} else {
			sgd(m.params)
		}
	}
	return m
}

// sameBits reports the first parameter value whose bits differ.
func sameBits(a, b []*parallel.Param) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d parameters, want %d", len(a), len(b))
	}
	for i := range a {
		if len(a[i].Data) != len(b[i].Data) {
			return fmt.Errorf("%s: %d values, want %d", a[i].Name, len(a[i].Data), len(b[i].Data))
		}
		for j := range a[i].Data {
			if math.Float32bits(a[i].Data[j]) != math.Float32bits(b[i].Data[j]) {
				return fmt.Errorf("%s[%d] = %v, want %v", a[i].Name, j, a[i].Data[j], b[i].Data[j])
			}
		}
	}
	return nil
}
