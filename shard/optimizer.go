package shard

// Optimizer is an elementwise update rule: the new value of element i
// depends on data[i], grad[i], its own state and the step number only, so
// applying it to each rank's shard gives bitwise what applying it to the
// whole vector gives. The SGD, Adam and AdamW of the repository's model
// library (internal/nn) are such rules.
//
// State layout: each element owns k = len(StateNames()) consecutive state
// values, so elements [lo, hi) of a vector own state[k·lo : k·hi], and a
// shard of the vector has a contiguous shard of the state.
type Optimizer interface {
	// StateNames names the per-element state values in their order within
	// an element's group, e.g. {"exp_avg", "exp_avg_sq"}; empty for none.
	// Checkpoints name state tensors "<parameter>.<state name>".
	StateNames() []string
	// StateLen is k·n, the state values of n elements.
	StateLen(n int) int
	// Update applies step number step (1 for the first) to data, given
	// grad and the elements' state (StateLen(len(data)) values).
	Update(step int, data, grad, state []float32) error
}
