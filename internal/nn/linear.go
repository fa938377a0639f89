package nn

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"

	"github.com/ringo-ml/ringo/parallel"
)

// Linear is a fully connected layer, y = x·Wᵀ + b, with W stored row-major
// as out × in (PyTorch's layout) and b of length out.
type Linear struct {
	Weight, Bias *parallel.Param
	in, out      int

	x     []float32 // the last Forward's input (the caller's slice)
	batch int
	y, dx []float32
}

// NewLinear makes an in → out layer named name (its parameters are
// name+".weight" and name+".bias"), initialised as PyTorch initialises
// nn.Linear: W and b uniform in ±1/√in, drawn from rng.
func NewLinear(name string, in, out int, rng *rand.Rand) (*Linear, error) {
	if in <= 0 || out <= 0 {
		return nil, fmt.Errorf("nn: linear layer %q: sizes %d → %d must be positive", name, in, out)
	}
	l := &Linear{
		Weight: &parallel.Param{Name: name + ".weight", Data: make([]float32, out*in), Grad: make([]float32, out*in)},
		Bias:   &parallel.Param{Name: name + ".bias", Data: make([]float32, out), Grad: make([]float32, out)},
		in:     in,
		out:    out,
	}
	bound := float32(1 / math.Sqrt(float64(in)))
	for _, p := range []*parallel.Param{l.Weight, l.Bias} {
		for i := range p.Data {
			p.Data[i] = (2*rng.Float32() - 1) * bound
		}
	}
	return l, nil
}

func (l *Linear) InSize() int               { return l.in }
func (l *Linear) OutSize() int              { return l.out }
func (l *Linear) Params() []*parallel.Param { return []*parallel.Param{l.Weight, l.Bias} }

// Forward computes y = x·Wᵀ + b.
func (l *Linear) Forward(x []float32, batch int) ([]float32, error) {
	if err := checkBatch("forward", l.Weight.Name, x, batch, l.in); err != nil {
		return nil, err
	}
	// Forward reads only the values: a sharded training API may leave the
	// gradients unbound (nil) until backward.
	if err := l.checkData(); err != nil {
		return nil, err
	}
	l.x, l.batch = x, batch
	l.y = grow(l.y, batch*l.out)
	b := l.Bias.Data
	for r := range batch {
		copy(l.y[r*l.out:(r+1)*l.out], b)
	}
	gemm(false, true, batch, l.out, l.in, 1, x, l.Weight.Data, 1, l.y)
	return l.y, nil
}

// Backward adds ∂L/∂W = dyᵀ·x and ∂L/∂b = Σ_rows dy into the gradients,
// marks both ready, and then computes ∂L/∂x = dy·W.
func (l *Linear) Backward(dy []float32, inputGrad bool, ready func(*parallel.Param)) ([]float32, error) {
	if err := checkBatch("backward", l.Weight.Name, dy, l.batch, l.out); err != nil {
		return nil, err
	}
	if err := l.checkParams(); err != nil {
		return nil, err
	}
	gemm(true, false, l.out, l.in, l.batch, 1, dy, l.x, 1, l.Weight.Grad)
	if ready != nil {
		ready(l.Weight)
	}
	gb := l.Bias.Grad
	for r := range l.batch {
		row := dy[r*l.out : (r+1)*l.out]
		for j, v := range row {
			gb[j] += v
		}
	}
	if ready != nil {
		ready(l.Bias)
		// Let the goroutine the hook may have woken (a bucket's reduction)
		// start before this goroutine takes the processor for dx.
		runtime.Gosched()
	}
	if !inputGrad {
		return nil, nil
	}
	l.dx = grow(l.dx, l.batch*l.in)
	gemm(false, false, l.batch, l.in, l.out, 1, dy, l.Weight.Data, 0, l.dx)
	return l.dx, nil
}

// checkParams guards against a training API having re-pointed Data or Grad
// to slices of the wrong length.
func (l *Linear) checkParams() error {
	if err := checkParam(l.Weight, l.out*l.in, true); err != nil {
		return err
	}
	return checkParam(l.Bias, l.out, true)
}

// checkData is checkParams for the values alone.
func (l *Linear) checkData() error {
	if err := checkParam(l.Weight, l.out*l.in, false); err != nil {
		return err
	}
	return checkParam(l.Bias, l.out, false)
}

func checkParam(p *parallel.Param, n int, grad bool) error {
	if len(p.Data) != n || grad && len(p.Grad) != n {
		return fmt.Errorf("nn: parameter %s has %d values and %d gradients, want %d", p.Name, len(p.Data), len(p.Grad), n)
	}
	return nil
}

// checkBatch checks that x holds batch rows of width values; pass, the
// layer's name: what the error names.
func checkBatch(pass, layer string, x []float32, batch, width int) error {
	if batch < 0 || len(x) != batch*width {
		return fmt.Errorf("nn: %s %s: %d values for a batch of %d rows of %d", layer, pass, len(x), batch, width)
	}
	return nil
}
