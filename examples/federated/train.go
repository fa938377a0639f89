package main

import (
	"context"
	"math/rand/v2"

	"github.com/ringo-ml/ringo/internal/mnist"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/parallel/fed"
)

// evalChunk is how many test images one forward pass classifies.
const evalChunk = 500

// orderStream separates each client's per-round sample orders from the
// other random streams.
const orderStream = 1 << 42

// learner is one copy of the model: a client's, the server's (for
// evaluation) or the centralized run's.
type learner struct {
	model  *nn.Sequential
	loss   *nn.SoftmaxCrossEntropy
	x      []float32
	labels []int32
}

func newLearner(o *options) (*learner, error) {
	model, err := nn.NewMLP(o.layers, o.seed)
	if err != nil {
		return nil, err
	}
	loss, err := nn.NewSoftmaxCrossEntropy(mnist.Classes)
	if err != nil {
		return nil, err
	}
	rows := max(evalChunk, o.batch)
	return &learner{model: model, loss: loss, x: make([]float32, rows*mnist.Pixels), labels: make([]int32, rows)}, nil
}

// weights returns a copy of the model's parameters, flattened in order.
func (l *learner) weights() []float32 { return fed.Weights(l.model.Params()) }

// setWeights loads flattened parameters into the model.
func (l *learner) setWeights(w []float32) error { return fed.SetWeights(l.model.Params(), w) }

// step takes one SGD step on the samples idx of set, with FedProx's
// proximal term towards global when mu > 0, and returns the batch's summed
// loss.
func (l *learner) step(set *mnist.Set, idx []int, opt *nn.ParamOptimizer, global []float32, mu float32) (float64, error) {
	b := len(idx)
	x, labels := l.x[:b*mnist.Pixels], l.labels[:b]
	if err := set.Gather(idx, x, labels); err != nil {
		return 0, err
	}
	l.model.ZeroGrad()
	logits, err := l.model.Forward(x, b)
	if err != nil {
		return 0, err
	}
	loss, err := l.loss.Forward(logits, labels, 1/float32(b))
	if err != nil {
		return 0, err
	}
	if _, err := l.model.Backward(l.loss.Grad(), nil); err != nil {
		return 0, err
	}
	if mu > 0 {
		off := 0
		for _, p := range l.model.Params() {
			if err := fed.AddProximalGradient(p.Grad, p.Data, global[off:off+len(p.Data)], mu); err != nil {
				return 0, err
			}
			off += len(p.Data)
		}
	}
	return loss, opt.Step()
}

// accuracy is the fraction of set the model classifies correctly.
func (l *learner) accuracy(ctx context.Context, set *mnist.Set) (float64, error) {
	idx := make([]int, 0, evalChunk)
	correct := 0
	for start := 0; start < set.Len(); start += evalChunk {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		idx = idx[:0]
		for i := start; i < min(set.Len(), start+evalChunk); i++ {
			idx = append(idx, i)
		}
		x, labels := l.x[:len(idx)*mnist.Pixels], l.labels[:len(idx)]
		if err := set.Gather(idx, x, labels); err != nil {
			return 0, err
		}
		logits, err := l.model.Forward(x, len(idx))
		if err != nil {
			return 0, err
		}
		correct += nn.CountCorrect(logits, labels, mnist.Classes)
	}
	return float64(correct) / float64(set.Len()), nil
}

// epochOrder is a permutation of n samples for one pass, from the seed and
// a stream of the caller's.
func epochOrder(seed, stream uint64, n int) []int {
	return rand.New(rand.NewPCG(seed, orderStream+stream)).Perm(n)
}

// trainEpochs runs SGD over the samples of shard (indices into set) for
// epochs passes in the order of each pass's epochOrder, stopping early
// when stop says so before a step. It returns the steps taken and the mean
// loss.
func (l *learner) trainEpochs(o *options, set *mnist.Set, shard []int, stream uint64, global []float32, mu float32, stop func(step, steps int) error) (int, float64, error) {
	opt, err := nn.NewParamOptimizer(&nn.SGD{LR: float32(o.lr)}, l.model.Params())
	if err != nil {
		return 0, 0, err
	}
	perEpoch := (len(shard) + o.batch - 1) / o.batch
	steps := o.epochs * perEpoch
	idx := make([]int, 0, o.batch)
	var total float64
	var order []int
	seen := 0
	for s := range steps {
		if err := stop(s, steps); err != nil {
			return s, 0, err
		}
		e, b := s/perEpoch, s%perEpoch
		if b == 0 {
			order = epochOrder(o.seed, stream*1024+uint64(e), len(shard))
		}
		idx = idx[:0]
		for _, k := range order[b*o.batch : min(len(shard), (b+1)*o.batch)] {
			idx = append(idx, shard[k])
		}
		loss, err := l.step(set, idx, opt, global, mu)
		if err != nil {
			return s, 0, err
		}
		total += loss
		seen += len(idx)
	}
	return steps, total / float64(max(seen, 1)), nil
}
