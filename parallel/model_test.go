package parallel_test

import (
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/internal/testmodel"
)

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
func singleProcess(sizes []int, steps, batch int, mom bool) *testmodel.Model {
	m := testmodel.New(sizes, false)
	o := newMomentum(m.Params)
	for step := range steps {
		m.Backward(step*batch, batch, 1, nil)
		if mom {
			o.step(m.Params)
		} else {
			sgd(m.Params)
		}
	}
	return m
}
