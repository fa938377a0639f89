package fed

import (
	"fmt"

	"github.com/ringo-ml/ringo/parallel"
)

// Weights flattens a model's parameters, in order, into the vector the
// server and the clients exchange (ServerConfig.Weights, FitRes.Weights).
func Weights(params []*parallel.Param) []float32 {
	n := 0
	for _, p := range params {
		n += len(p.Data)
	}
	w := make([]float32, 0, n)
	for _, p := range params {
		w = append(w, p.Data...)
	}
	return w
}

// SetWeights copies a flat vector (FitIns.Weights) into the parameters, in
// order; its length must be the parameters' total.
func SetWeights(params []*parallel.Param, w []float32) error {
	n := 0
	for _, p := range params {
		n += len(p.Data)
	}
	if len(w) != n {
		return fmt.Errorf("fed: %d weights for parameters of %d", len(w), n)
	}
	for _, p := range params {
		w = w[copy(p.Data, w):]
	}
	return nil
}
