package shard

import (
	"fmt"
	"math"
)

// RowOptimizer is a sparse update rule: Backward applies it to each row a
// step touched, once, with the row's gradient summed over every rank, and
// leaves every other row (and its state) alone, as torch's sparse
// optimizers do.
type RowOptimizer interface {
	// StatePerValue is how many state values each table value keeps (they
	// start at zero).
	StatePerValue() int
	// UpdateRow updates one row's values from its gradient and its state
	// (StatePerValue()·len(row) values).
	UpdateRow(row, grad, state []float32)
}

// RowSGD is w ← w − LR·g on the touched rows.
type RowSGD struct{ LR float32 }

func (o *RowSGD) StatePerValue() int { return 0 }

func (o *RowSGD) UpdateRow(row, grad, _ []float32) {
	for i, g := range grad {
		row[i] -= o.LR * g
	}
}

// Adagrad is torch.optim.Adagrad's sparse update (no learning-rate decay,
// no weight decay) on the touched rows:
//
//	s ← s + g²
//	w ← w − LR·g / (√s + Eps)
//
// with s starting at InitialAccumulator.
type Adagrad struct {
	LR, Eps, InitialAccumulator float32
}

// NewAdagrad is Adagrad with torch's defaults (Eps 1e-10, accumulator 0).
func NewAdagrad(lr float32) *Adagrad { return &Adagrad{LR: lr, Eps: 1e-10} }

func (o *Adagrad) StatePerValue() int { return 1 }

func (o *Adagrad) UpdateRow(row, grad, state []float32) {
	for i, g := range grad {
		s := state[i] + g*g
		state[i] = s
		row[i] -= o.LR * g / (float32(math.Sqrt(float64(s+o.InitialAccumulator))) + o.Eps)
	}
}

func checkRowOptimizer(o RowOptimizer) error {
	if o == nil {
		return nil
	}
	if k := o.StatePerValue(); k < 0 || k > 16 {
		return fmt.Errorf("a RowOptimizer with %d state values per value", k)
	}
	return nil
}
