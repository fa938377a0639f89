package nn

import (
	"fmt"

	"github.com/ringo-ml/ringo/parallel"
)

// ReLU is the elementwise max(x, 0) over rows of a given width.
type ReLU struct {
	width int
	batch int
	y, dx []float32
}

// NewReLU makes a ReLU for rows of width features.
func NewReLU(width int) (*ReLU, error) {
	if width <= 0 {
		return nil, fmt.Errorf("nn: relu width %d must be positive", width)
	}
	return &ReLU{width: width}, nil
}

func (r *ReLU) InSize() int               { return r.width }
func (r *ReLU) OutSize() int              { return r.width }
func (r *ReLU) Params() []*parallel.Param { return nil }

func (r *ReLU) Forward(x []float32, batch int) ([]float32, error) {
	if err := checkBatch("forward", "relu", x, batch, r.width); err != nil {
		return nil, err
	}
	r.batch = batch
	r.y = grow(r.y, len(x))
	for i, v := range x {
		r.y[i] = max(v, 0)
	}
	return r.y, nil
}

// Backward passes dy where the output was positive. The derivative at 0 is
// taken as 0, as PyTorch does.
func (r *ReLU) Backward(dy []float32, inputGrad bool, _ func(*parallel.Param)) ([]float32, error) {
	if err := checkBatch("backward", "relu", dy, r.batch, r.width); err != nil {
		return nil, err
	}
	if !inputGrad {
		return nil, nil
	}
	r.dx = grow(r.dx, len(dy))
	for i, v := range dy {
		if r.y[i] > 0 {
			r.dx[i] = v
		} else {
			r.dx[i] = 0
		}
	}
	return r.dx, nil
}
