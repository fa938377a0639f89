package nn

import (
	"fmt"
	"math/rand/v2"

	"github.com/ringo-ml/ringo/parallel"
)

// Sequential chains layers: each one's output is the next one's input.
type Sequential struct {
	Layers []Layer
	// InputGrad makes Backward return ∂L/∂input. An entire model leaves it
	// false and the first layer skips that product; a pipeline stage that
	// hands the gradient to the previous stage sets it.
	InputGrad bool

	params []*parallel.Param
}

// NewSequential chains layers whose sizes must match.
func NewSequential(layers ...Layer) (*Sequential, error) {
	if len(layers) == 0 {
		return nil, fmt.Errorf("nn: a sequential model needs at least one layer")
	}
	s := &Sequential{Layers: layers}
	for i, l := range layers {
		if i > 0 && layers[i-1].OutSize() != l.InSize() {
			return nil, fmt.Errorf("nn: layer %d gives %d features but layer %d takes %d", i-1, layers[i-1].OutSize(), i, l.InSize())
		}
		s.params = append(s.params, l.Params()...)
	}
	return s, nil
}

// NewMLP builds Linear layers of the given sizes (inputs, hidden..., outputs)
// with a ReLU between consecutive ones, named fc0, fc1, ... Its parameters
// are fc0.weight, fc0.bias, fc1.weight, ... in that order. Initial values
// depend on seed and the sizes only, so every rank and every mode of a
// training program starts from the same model.
func NewMLP(sizes []int, seed uint64) (*Sequential, error) {
	if len(sizes) < 2 {
		return nil, fmt.Errorf("nn: an MLP needs at least input and output sizes, got %v", sizes)
	}
	var layers []Layer
	for i := range len(sizes) - 1 {
		// One stream per layer: adding a layer does not change the others.
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		fc, err := NewLinear(fmt.Sprintf("fc%d", i), sizes[i], sizes[i+1], rng)
		if err != nil {
			return nil, err
		}
		layers = append(layers, fc)
		if i < len(sizes)-2 {
			relu, err := NewReLU(sizes[i+1])
			if err != nil {
				return nil, err
			}
			layers = append(layers, relu)
		}
	}
	return NewSequential(layers...)
}

func (s *Sequential) InSize() int  { return s.Layers[0].InSize() }
func (s *Sequential) OutSize() int { return s.Layers[len(s.Layers)-1].OutSize() }

// Params lists every layer's parameters in forward order. The slice is the
// model's own: do not modify it.
func (s *Sequential) Params() []*parallel.Param { return s.params }

// NumParams is the total number of parameter values.
func (s *Sequential) NumParams() int {
	n := 0
	for _, p := range s.params {
		n += len(p.Data)
	}
	return n
}

// Forward runs the layers in order on a batch of rows.
func (s *Sequential) Forward(x []float32, batch int) ([]float32, error) {
	var err error
	for _, l := range s.Layers {
		if x, err = l.Forward(x, batch); err != nil {
			return nil, err
		}
	}
	return x, nil
}

// Backward runs the layers in reverse order from ∂L/∂output, adding into
// every parameter's Grad and calling ready (when not nil) for each as soon
// as it is final: the last layer's parameters first. It returns ∂L/∂input
// when InputGrad is set, and nil otherwise.
func (s *Sequential) Backward(dy []float32, ready func(*parallel.Param)) ([]float32, error) {
	var err error
	for i := len(s.Layers) - 1; i >= 0; i-- {
		if dy, err = s.Layers[i].Backward(dy, i > 0 || s.InputGrad, ready); err != nil {
			return nil, err
		}
	}
	return dy, nil
}

// ZeroGrad sets every gradient to zero.
func (s *Sequential) ZeroGrad() {
	for _, p := range s.params {
		clear(p.Grad)
	}
}
