package nn

import (
	"fmt"
	"math"
)

// Optimizer is an update rule that treats every parameter element on its
// own: the new value of element i depends on data[i], grad[i], its own
// state and the step number only. An engine can therefore apply it to a
// whole model, to one parameter or to any shard of a flat parameter vector,
// and get bitwise the same numbers.
//
// State layout: each element owns k = len(StateNames()) consecutive state
// values (interleaved, not one array per kind), so element i's state is
// state[k·i : k·(i+1)], and elements [lo, hi) of a flat vector own
// state[k·lo : k·hi] = state[StateLen(lo) : StateLen(hi)]: a shard of the
// vector has a contiguous shard of the state (StateRange). State starts at
// zero.
type Optimizer interface {
	// StateNames names the per-element state values in their order within
	// an element's group, e.g. {"exp_avg", "exp_avg_sq"}; empty when the
	// rule keeps no state.
	StateNames() []string
	// StateLen is the number of state values for n elements,
	// len(StateNames())·n; it allocates nothing, so engines call it per step.
	StateLen(n int) int
	// Update applies step number step (1 for the first update) to data,
	// given grad and the elements' state (StateLen(len(data)) values).
	Update(step int, data, grad, state []float32) error
}

// StateRange is the range of state that elements [lo, hi) of a flat vector
// own.
func StateRange(o Optimizer, lo, hi int) (int, int) { return o.StateLen(lo), o.StateLen(hi) }

func checkUpdate(o Optimizer, step int, data, grad, state []float32) error {
	if step < 1 {
		return fmt.Errorf("nn: optimizer step %d: steps count from 1", step)
	}
	if len(grad) != len(data) || len(state) != o.StateLen(len(data)) {
		return fmt.Errorf("nn: optimizer update of %d values with %d gradients and %d state values (want %d)",
			len(data), len(grad), len(state), o.StateLen(len(data)))
	}
	return nil
}

// SGD is stochastic gradient descent with optional momentum, Nesterov
// momentum and (L2, coupled) weight decay, as torch.optim.SGD computes it
// without dampening:
//
//	g ← grad + WeightDecay·w
//	v ← Momentum·v + g                (v starts at 0, so v₁ = g)
//	d ← g + Momentum·v if Nesterov, else v
//	w ← w − LR·d
type SGD struct {
	LR, Momentum, WeightDecay float32
	Nesterov                  bool
}

func (o *SGD) StateNames() []string {
	if o.Momentum == 0 {
		return nil
	}
	return []string{"momentum_buffer"}
}

func (o *SGD) StateLen(n int) int {
	if o.Momentum == 0 {
		return 0
	}
	return n
}

func (o *SGD) Update(step int, data, grad, state []float32) error {
	if err := checkUpdate(o, step, data, grad, state); err != nil {
		return err
	}
	lr, mu, wd := o.LR, o.Momentum, o.WeightDecay
	if mu == 0 {
		for i, w := range data {
			data[i] = w - lr*(grad[i]+wd*w)
		}
		return nil
	}
	state = state[:len(data)]
	for i, w := range data {
		g := grad[i] + wd*w
		v := mu*state[i] + g
		state[i] = v
		if o.Nesterov {
			v = g + mu*v
		}
		data[i] = w - lr*v
	}
	return nil
}

// Adam is Adam (Kingma & Ba) as torch.optim.Adam computes it; with
// Decoupled it is AdamW (Loshchilov & Hutter), whose weight decay shrinks
// the weights directly instead of adding to the gradient:
//
//	w ← w·(1 − LR·WeightDecay)          (Decoupled)
//	g ← grad + WeightDecay·w           (not Decoupled)
//	m ← β₁·m + (1−β₁)·g
//	v ← β₂·v + (1−β₂)·g²
//	w ← w − LR/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + Eps)
//
// Per element, m and v are stored interleaved: state[2i] = m, state[2i+1] = v.
type Adam struct {
	LR, Beta1, Beta2, Eps, WeightDecay float32
	Decoupled                          bool
}

// NewAdam is Adam with PyTorch's defaults (β = 0.9, 0.999; ε = 1e-8) and no
// weight decay.
func NewAdam(lr float32) *Adam {
	return &Adam{LR: lr, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}
}

// NewAdamW is AdamW with PyTorch's defaults and the given weight decay
// (PyTorch's default is 0.01).
func NewAdamW(lr, weightDecay float32) *Adam {
	return &Adam{LR: lr, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: weightDecay, Decoupled: true}
}

func (o *Adam) StateNames() []string { return []string{"exp_avg", "exp_avg_sq"} }
func (o *Adam) StateLen(n int) int   { return 2 * n }

func (o *Adam) Update(step int, data, grad, state []float32) error {
	if err := checkUpdate(o, step, data, grad, state); err != nil {
		return err
	}
	b1, b2, eps := o.Beta1, o.Beta2, o.Eps
	// The bias corrections depend on the step only, so every shard of a
	// vector computes the same scalars.
	bc1 := 1 - math.Pow(float64(b1), float64(step))
	bc2 := 1 - math.Pow(float64(b2), float64(step))
	stepSize := float32(float64(o.LR) / bc1)
	invSqrtBC2 := float32(1 / math.Sqrt(bc2))
	decay := float32(1)
	l2 := o.WeightDecay
	if o.Decoupled {
		decay, l2 = 1-o.LR*o.WeightDecay, 0
	}
	state = state[:2*len(data)]
	for i, w := range data {
		w *= decay
		g := grad[i] + l2*w
		m := b1*state[2*i] + (1-b1)*g
		v := b2*state[2*i+1] + (1-b2)*g*g
		state[2*i], state[2*i+1] = m, v
		denom := float32(math.Sqrt(float64(v)))*invSqrtBC2 + eps
		data[i] = w - stepSize*(m/denom)
	}
	return nil
}
