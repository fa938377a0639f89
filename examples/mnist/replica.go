package main

import (
	"fmt"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/internal/mnist"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/parallel"
)

// evalChunk is how many test images one forward pass classifies.
const evalChunk = 500

// replica is a whole copy of the model and its optimizer, trained on this
// rank's share of each global batch: what the single and ddp modes hold.
type replica struct {
	model *nn.Sequential
	loss  *nn.SoftmaxCrossEntropy
	opt   *nn.ParamOptimizer
	train *mnist.Set
	test  *mnist.Set

	x      []float32 // this rank's rows of the batch
	labels []int32
}

func newReplica(j *job) (*replica, error) {
	o := &j.opts
	model, err := nn.NewMLP(o.layers, o.seed)
	if err != nil {
		return nil, err
	}
	loss, err := nn.NewSoftmaxCrossEntropy(mnist.Classes)
	if err != nil {
		return nil, err
	}
	opt, err := nn.NewParamOptimizer(newOptimizer(o), model.Params())
	if err != nil {
		return nil, err
	}
	rows := max(evalChunk, (o.batch+j.size()-1)/j.size())
	return &replica{
		model: model, loss: loss, opt: opt, train: j.train, test: j.test,
		x: make([]float32, rows*mnist.Pixels), labels: make([]int32, rows),
	}, nil
}

// forwardBackward computes the gradients of samples (this rank's share of
// a global batch) with the given loss scale, calling ready for each
// parameter as backward finishes it, and returns the summed loss.
func (r *replica) forwardBackward(samples []int, scale float32, ready func(*parallel.Param)) (float64, error) {
	b := len(samples)
	x, labels := r.x[:b*mnist.Pixels], r.labels[:b]
	if err := r.train.Gather(samples, x, labels); err != nil {
		return 0, err
	}
	r.model.ZeroGrad()
	logits, err := r.model.Forward(x, b)
	if err != nil {
		return 0, err
	}
	loss, err := r.loss.Forward(logits, labels, scale)
	if err != nil {
		return 0, err
	}
	_, err = r.model.Backward(r.loss.Grad(), ready)
	return loss, err
}

// correct counts the test images [lo, hi) the model classifies correctly.
func (r *replica) correct(lo, hi int) (int, error) {
	idx := make([]int, 0, evalChunk)
	correct := 0
	for start := lo; start < hi; start += evalChunk {
		idx = idx[:0]
		for i := start; i < min(hi, start+evalChunk); i++ {
			idx = append(idx, i)
		}
		x, labels := r.x[:len(idx)*mnist.Pixels], r.labels[:len(idx)]
		if err := r.test.Gather(idx, x, labels); err != nil {
			return 0, err
		}
		logits, err := r.model.Forward(x, len(idx))
		if err != nil {
			return 0, err
		}
		correct += nn.CountCorrect(logits, labels, mnist.Classes)
	}
	return correct, nil
}

// stateTensors adds the optimizer's state to ck.
func (r *replica) addState(ck *checkpoint.Checkpoint) {
	ck.Tensors = append(ck.Tensors, r.opt.StateTensors()...)
}

// restoreState sets the optimizer's state and step count from ck.
func (r *replica) restoreState(ck *checkpoint.Checkpoint) error {
	if err := r.opt.LoadState(int(ck.Step), ck.Tensors); err != nil {
		return fmt.Errorf("optimizer state: %w", err)
	}
	return nil
}
