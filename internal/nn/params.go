package nn

import (
	"fmt"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/parallel"
)

// ParamOptimizer applies an Optimizer to a list of parameters, keeping
// their state as if the parameters were one flat vector in list order:
// parameter j's state is the StateRange of its elements in that vector.
type ParamOptimizer struct {
	opt     Optimizer
	params  []*parallel.Param
	offsets []int // offsets[j] is parameter j's first element in the flat vector; offsets[len] is the total
	state   []float32
	step    int
}

// NewParamOptimizer prepares opt for params, with zero state and no steps
// taken.
func NewParamOptimizer(opt Optimizer, params []*parallel.Param) (*ParamOptimizer, error) {
	if opt == nil {
		return nil, fmt.Errorf("nn: no optimizer")
	}
	if k := len(opt.StateNames()); opt.StateLen(1) != k {
		return nil, fmt.Errorf("nn: optimizer keeps %d state values per element but names %d", opt.StateLen(1), k)
	}
	po := &ParamOptimizer{opt: opt, params: params, offsets: make([]int, len(params)+1)}
	seen := make(map[string]bool, len(params))
	for j, p := range params {
		if p == nil {
			return nil, fmt.Errorf("nn: parameter %d is nil", j)
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("nn: two parameters are named %q", p.Name)
		}
		seen[p.Name] = true
		po.offsets[j+1] = po.offsets[j] + len(p.Data)
	}
	po.state = make([]float32, opt.StateLen(po.offsets[len(params)]))
	return po, nil
}

// Step applies the next update to every parameter from its Grad.
func (po *ParamOptimizer) Step() error {
	po.step++
	for j, p := range po.params {
		lo, hi := StateRange(po.opt, po.offsets[j], po.offsets[j+1])
		if err := po.opt.Update(po.step, p.Data, p.Grad, po.state[lo:hi]); err != nil {
			po.step--
			return fmt.Errorf("nn: parameter %s: %w", p.Name, err)
		}
	}
	return nil
}

// Steps is the number of updates applied so far.
func (po *ParamOptimizer) Steps() int { return po.step }

// State is the flat state vector (interleaved per element, see Optimizer),
// owned by po.
func (po *ParamOptimizer) State() []float32 { return po.state }

// StateTensors exports the state for a checkpoint: one whole tensor per
// parameter and state kind, named "<param>.<kind>" (fc0.weight.exp_avg), of
// the parameter's length, in parameter order and then kind order. The
// tensors are copies.
func (po *ParamOptimizer) StateTensors() []checkpoint.Tensor {
	names := po.opt.StateNames()
	k := len(names)
	out := make([]checkpoint.Tensor, 0, k*len(po.params))
	for j, p := range po.params {
		lo, hi := StateRange(po.opt, po.offsets[j], po.offsets[j+1])
		st := po.state[lo:hi]
		for s, name := range names {
			t := checkpoint.Tensor{Name: p.Name + "." + name, Data: make([]float32, len(p.Data))}
			for i := range t.Data {
				t.Data[i] = st[k*i+s]
			}
			out = append(out, t)
		}
	}
	return out
}

// LoadState restores the number of steps taken and the state StateTensors
// exported, found by name among tensors (which may hold others, such as the
// parameters of a checkpoint). Every state tensor must be there, whole and
// of the right length; on error nothing changes.
func (po *ParamOptimizer) LoadState(steps int, tensors []checkpoint.Tensor) error {
	if steps < 0 {
		return fmt.Errorf("nn: optimizer state at step %d", steps)
	}
	names := po.opt.StateNames()
	k := len(names)
	byName := make(map[string][]float32, len(tensors))
	for _, t := range tensors {
		if t.Offset != 0 || (t.Shape != nil && !(len(t.Shape) == 1 && t.Shape[0] == len(t.Data))) {
			continue // a slice of a bigger tensor is not a whole state tensor
		}
		byName[t.Name] = t.Data
	}
	// Check everything before changing anything.
	for _, p := range po.params {
		for _, name := range names {
			data, ok := byName[p.Name+"."+name]
			if !ok {
				return fmt.Errorf("nn: optimizer state lacks a whole tensor %s.%s", p.Name, name)
			}
			if len(data) != len(p.Data) {
				return fmt.Errorf("nn: optimizer state %s.%s has %d values, want %d", p.Name, name, len(data), len(p.Data))
			}
		}
	}
	for j, p := range po.params {
		lo, hi := StateRange(po.opt, po.offsets[j], po.offsets[j+1])
		st := po.state[lo:hi]
		for s, name := range names {
			for i, v := range byName[p.Name+"."+name] {
				st[k*i+s] = v
			}
		}
	}
	po.step = steps
	return nil
}
