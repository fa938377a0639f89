package nn

import "github.com/ringo-ml/ringo/parallel"

// Layer is one stage of a feed-forward network working on a batch of rows.
type Layer interface {
	// Forward computes the output for a batch of rows x (batch × InSize()).
	// The result belongs to the layer and stays valid until the next
	// Forward. The layer may keep x for Backward, so x must not change
	// until then.
	Forward(x []float32, batch int) ([]float32, error)
	// Backward takes ∂L/∂y for the last Forward's batch, adds the
	// gradients of the layer's parameters into their Grad, calls ready
	// (when not nil) for each parameter once its gradient is final, and
	// returns ∂L/∂x, or nil when inputGrad is false.
	Backward(dy []float32, inputGrad bool, ready func(*parallel.Param)) ([]float32, error)
	// Params lists the layer's parameters (none for an activation).
	Params() []*parallel.Param
	InSize() int
	OutSize() int
}

// grow returns buf resized to n elements, reallocating only when its
// capacity is too small; the contents are unspecified.
func grow(buf []float32, n int) []float32 {
	if cap(buf) < n {
		return make([]float32, n)
	}
	return buf[:n]
}
