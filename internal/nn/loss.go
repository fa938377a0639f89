package nn

import (
	"fmt"
	"math"
)

// SoftmaxCrossEntropy is the cross-entropy of softmax(logits) against
// integer class labels, for rows of a fixed number of classes.
type SoftmaxCrossEntropy struct {
	classes int
	grad    []float32
}

// NewSoftmaxCrossEntropy makes the loss for the given number of classes.
func NewSoftmaxCrossEntropy(classes int) (*SoftmaxCrossEntropy, error) {
	if classes <= 0 {
		return nil, fmt.Errorf("nn: softmax cross-entropy over %d classes", classes)
	}
	return &SoftmaxCrossEntropy{classes: classes}, nil
}

// GlobalMeanScale is the loss scale that makes gradients averaged over
// ranks equal the gradient of the mean loss over the whole global batch,
// however the batch is split over the ranks: ranks/globalBatch (see the
// package documentation). In one process (ranks = 1) it is 1/batch.
func GlobalMeanScale(globalBatch, ranks int) float32 {
	if globalBatch <= 0 {
		return 0
	}
	return float32(ranks) / float32(globalBatch)
}

// Forward returns the sum over the batch of the per-row losses
// −log softmax(logits)[label], computed in float64, and stores
// scale·∂(sum)/∂logits = scale·(softmax(logits) − onehot(label)) for Grad.
// Use scale 1/batch for the gradient of the batch mean, or GlobalMeanScale
// under data parallelism.
func (l *SoftmaxCrossEntropy) Forward(logits []float32, labels []int32, scale float32) (float64, error) {
	c := l.classes
	if len(logits) != len(labels)*c {
		return 0, fmt.Errorf("nn: cross-entropy: %d logits for %d labels of %d classes", len(logits), len(labels), c)
	}
	l.grad = grow(l.grad, len(logits))
	var total float64
	for r, y := range labels {
		if y < 0 || int(y) >= c {
			return 0, fmt.Errorf("nn: cross-entropy: label %d of row %d is not a class in [0, %d)", y, r, c)
		}
		z := logits[r*c : (r+1)*c]
		g := l.grad[r*c : (r+1)*c]
		zmax := z[0]
		for _, v := range z[1:] {
			zmax = max(zmax, v)
		}
		var sum float64
		for j, v := range z {
			e := math.Exp(float64(v - zmax))
			g[j] = float32(e)
			sum += e
		}
		inv := 1 / sum
		for j := range g {
			g[j] = float32(float64(g[j])*inv) * scale
		}
		g[y] -= scale
		total += math.Log(sum) - float64(z[y]-zmax)
	}
	return total, nil
}

// Grad is scale·∂(Σ losses)/∂logits of the last Forward, batch × classes;
// it belongs to the loss and stays valid until the next Forward.
func (l *SoftmaxCrossEntropy) Grad() []float32 { return l.grad }

// CountCorrect counts the rows whose largest logit (the first, on ties) is
// at the label's index.
func CountCorrect(logits []float32, labels []int32, classes int) int {
	correct := 0
	for r, y := range labels {
		z := logits[r*classes : (r+1)*classes]
		best := 0
		for j, v := range z {
			if v > z[best] {
				best = j
			}
		}
		if best == int(y) {
			correct++
		}
	}
	return correct
}
