// Package testmodel is the model the tests of package parallel and its
// subpackages train: independent linear heads fitted with an L1 loss. Head
// h predicts w_h·x + b_h from its own features; the gradient of
// |pred − t| is sign(pred − t)·x, so every per-sample gradient is a small
// integer whatever the weights have become, and a batch's gradient (a sum
// of them, divided by a power of two) is exact. Training on several ranks
// and in one process must then agree bitwise: the ranks' averages differ
// from the single process's mean only in the order of exact additions, and
// a last division by the number of ranks rounds the same real number on
// both sides. Only tests use it (internal/archtest keeps it so).
package testmodel

import (
	"fmt"
	"math"

	"github.com/ringo-ml/ringo/parallel"
)

// Model is the heads' parameters: head h's weights are Params[2h], its
// bias Params[2h+1].
type Model struct {
	Sizes  []int // weights per head
	Params []*parallel.Param
}

// HeadSizes are the heads the tests train: odd sizes, a single weight,
// and a head bigger than the tests' tiny buckets (and split across
// parameter servers).
func HeadSizes() []int { return []int{1, 7, 33, 1000, 3} }

// New makes the model with its initial values; junk gives every value 99
// instead (what ranks other than 0 start from, to check that rank 0's
// values are copied to them).
func New(sizes []int, junk bool) *Model {
	m := &Model{Sizes: sizes}
	for h, n := range sizes {
		w := &parallel.Param{Name: fmt.Sprintf("head%d.w", h), Data: make([]float32, n), Grad: make([]float32, n)}
		b := &parallel.Param{Name: fmt.Sprintf("head%d.b", h), Data: make([]float32, 1), Grad: make([]float32, 1)}
		for j := range w.Data {
			w.Data[j] = float32((j*5+h)%9-4) / 4
			if junk {
				w.Data[j] = 99
			}
		}
		if junk {
			b.Data[0] = 99
		}
		m.Params = append(m.Params, w, b)
	}
	return m
}

// feature and target of global sample s: small integers.
func feature(s, h, j int) float32 { return float32((s*7+h*3+j*5)%7 - 3) }
func target(s, h int) float32     { return float32((s*11+h)%9 - 4) }

// Backward writes into each p.Grad the mean gradient over the samples
// [from, from+count) (count a power of two), scaled by scale (a power of
// two), head by head from the last, calling ready(p) as each is final
// (ready may be nil).
func (m *Model) Backward(from, count int, scale float32, ready func(*parallel.Param)) {
	for h := len(m.Sizes) - 1; h >= 0; h-- {
		m.headBackward(h, from, count, scale)
		if ready != nil {
			ready(m.Params[2*h])
			ready(m.Params[2*h+1])
		}
	}
}

func (m *Model) headBackward(h, from, count int, scale float32) {
	w, b := m.Params[2*h], m.Params[2*h+1]
	clear(w.Grad)
	b.Grad[0] = 0
	for s := from; s < from+count; s++ {
		pred := b.Data[0]
		for j, wj := range w.Data {
			pred += wj * feature(s, h, j)
		}
		var e float32
		switch t := target(s, h); {
		case pred > t:
			e = 1
		case pred < t:
			e = -1
		}
		for j := range w.Grad {
			w.Grad[j] += e * feature(s, h, j)
		}
		b.Grad[0] += e
	}
	for j := range w.Grad {
		w.Grad[j] = w.Grad[j] / float32(count) * scale
	}
	b.Grad[0] = b.Grad[0] / float32(count) * scale
}

// SameBits reports the first parameter value whose bits differ.
func SameBits(a, b []*parallel.Param) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d parameters, want %d", len(a), len(b))
	}
	for i := range a {
		if len(a[i].Data) != len(b[i].Data) {
			return fmt.Errorf("%s: %d values, want %d", a[i].Name, len(a[i].Data), len(b[i].Data))
		}
		for j := range a[i].Data {
			if math.Float32bits(a[i].Data[j]) != math.Float32bits(b[i].Data[j]) {
				return fmt.Errorf("%s[%d] = %v, want %v", a[i].Name, j, a[i].Data[j], b[i].Data[j])
			}
		}
	}
	return nil
}
