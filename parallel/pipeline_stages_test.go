package parallel

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
)

// pipeAffine is a test stage: out = x·Wᵀ + b, row by row, for any number of
// rows. Its last stage's loss is either ½·Σ(out−target)² (a real loss) or
// Σ out·target (linear: with small integers every value stays exact).
type pipeAffine struct {
	din, dout int
	w, b      *Param
	ins, outs [][]float32 // by micro-batch: the input kept for Backward, the output buffer
	linear    bool        // the linear loss
	// failAt, when set, makes Forward (or Backward) of that micro-batch fail
	// on the step counted by calls.
	failForward, failBackward int
	failStep                  int
	steps                     int
	block                     chan struct{} // when set, Forward of micro-batch 0 waits for it
	entered                   chan struct{} // told when Forward starts waiting on block
	delay                     time.Duration // a compute-bound stage: each Forward waits this long, Backward twice
}

var errStageFailed = fmt.Errorf("the test stage failed on purpose")

func newPipeAffine(stage, din, dout int, init func() float32) *pipeAffine {
	a := &pipeAffine{din: din, dout: dout, failForward: -1, failBackward: -1}
	a.w = &Param{Name: fmt.Sprintf("stage%d.w", stage), Data: make([]float32, din*dout), Grad: make([]float32, din*dout)}
	a.b = &Param{Name: fmt.Sprintf("stage%d.b", stage), Data: make([]float32, dout), Grad: make([]float32, dout)}
	for i := range a.w.Data {
		a.w.Data[i] = init()
	}
	for i := range a.b.Data {
		a.b.Data[i] = init()
	}
	return a
}

func (a *pipeAffine) Params() []*Param { return []*Param{a.w, a.b} }

func (a *pipeAffine) grow(mb int) {
	for len(a.outs) <= mb {
		a.outs = append(a.outs, nil)
		a.ins = append(a.ins, nil)
	}
}

func (a *pipeAffine) Forward(ctx context.Context, mb int, in []float32) ([]float32, error) {
	if mb == 0 {
		a.steps++
	}
	if a.steps == a.failStep && mb == a.failForward {
		return nil, errStageFailed
	}
	if a.block != nil && mb == 0 {
		a.entered <- struct{}{}
		<-a.block
	}
	if a.delay > 0 {
		time.Sleep(a.delay) // a calibrated compute that leaves the CPU free, see the benchmark
	}
	if len(in)%a.din != 0 {
		return nil, fmt.Errorf("input of %d values is not rows of %d", len(in), a.din)
	}
	rows := len(in) / a.din
	a.grow(mb)
	if cap(a.outs[mb]) < rows*a.dout {
		a.outs[mb] = make([]float32, rows*a.dout)
	}
	out := a.outs[mb][:rows*a.dout]
	for n := range rows {
		x := in[n*a.din : (n+1)*a.din]
		for o := range a.dout {
			acc := a.b.Data[o]
			w := a.w.Data[o*a.din : (o+1)*a.din]
			for k := range x {
				acc += w[k] * x[k]
			}
			out[n*a.dout+o] = acc
		}
	}
	a.ins[mb] = in
	return out, nil
}

func (a *pipeAffine) Backward(ctx context.Context, mb int, dOut, dIn []float32) error {
	if a.steps == a.failStep && mb == a.failBackward {
		return errStageFailed
	}
	if a.delay > 0 {
		time.Sleep(2 * a.delay)
	}
	in := a.ins[mb]
	rows := len(in) / a.din
	if len(dOut) != rows*a.dout || (dIn != nil && len(dIn) != len(in)) {
		return fmt.Errorf("backward of micro-batch %d: %d rows, dOut %d, dIn %d", mb, rows, len(dOut), len(dIn))
	}
	for n := range rows {
		x, g := in[n*a.din:(n+1)*a.din], dOut[n*a.dout:(n+1)*a.dout]
		for o, go_ := range g {
			a.b.Grad[o] += go_
			wg := a.w.Grad[o*a.din : (o+1)*a.din]
			for k := range x {
				wg[k] += go_ * x[k]
			}
		}
		if dIn != nil {
			dx := dIn[n*a.din : (n+1)*a.din]
			for k := range dx {
				var acc float32
				for o, go_ := range g {
					acc += go_ * a.w.Data[o*a.din+k]
				}
				dx[k] = acc
			}
		}
	}
	a.ins[mb] = nil
	return nil
}

func (a *pipeAffine) Loss(ctx context.Context, mb int, out, targets, dOut []float32) (float64, error) {
	if len(targets) != len(out) {
		return 0, fmt.Errorf("%d targets for %d outputs", len(targets), len(out))
	}
	var loss float64
	for i := range out {
		if a.linear {
			loss += float64(out[i] * targets[i])
			dOut[i] = targets[i]
			continue
		}
		d := out[i] - targets[i]
		loss += float64(d*d) / 2
		dOut[i] = d
	}
	return loss, nil
}

// pipeModel describes a test model of stages affine layers with the given
// widths (len(widths) == stages+1), its initial values drawn from seed.
type pipeModel struct {
	widths []int
	seed   uint64
	exact  bool // small integers and the linear loss, instead of random floats
}

func (m pipeModel) stages() int { return len(m.widths) - 1 }

// build makes all the model's stages, each the same wherever it is built.
func (m pipeModel) build() []*pipeAffine {
	rng := rand.New(rand.NewPCG(m.seed, 1))
	init := func() float32 { return float32(rng.NormFloat64()) / 2 }
	if m.exact {
		init = func() float32 { return float32(rng.IntN(5) - 2) }
	}
	st := make([]*pipeAffine, m.stages())
	for s := range st {
		st[s] = newPipeAffine(s, m.widths[s], m.widths[s+1], init)
		st[s].linear = m.exact
	}
	return st
}

// batch is step's data: samples rows of inputs and targets.
func (m pipeModel) batch(step, samples int) Batch {
	rng := rand.New(rand.NewPCG(m.seed+uint64(step)+1000, 2))
	val := func() float32 { return float32(rng.NormFloat64()) }
	if m.exact {
		val = func() float32 { return float32(rng.IntN(3) - 1) }
	}
	b := Batch{Samples: samples, Inputs: make([]float32, samples*m.widths[0]), Targets: make([]float32, samples*m.widths[len(m.widths)-1])}
	for i := range b.Inputs {
		b.Inputs[i] = val()
	}
	for i := range b.Targets {
		b.Targets[i] = val()
	}
	return b
}

// pipeSGD is the update every test applies: p -= lr·grad.
func pipeSGD(params []*Param, lr float32) {
	for _, p := range params {
		for i := range p.Data {
			p.Data[i] -= lr * p.Grad[i]
		}
	}
}

// sequentialStep is what a pipeline step must equal: the stages run one
// after the other in one process, micro-batch by micro-batch, the gradients
// accumulated in micro-batch order and divided by m.
func sequentialStep(t *testing.T, st []*pipeAffine, b Batch, m int) float64 {
	t.Helper()
	ctx := context.Background()
	for _, s := range st {
		for _, p := range s.Params() {
			clear(p.Grad)
		}
	}
	din, dlast := st[0].din, st[len(st)-1].dout
	var loss float64
	for mb := range m {
		size, extra := b.Samples/m, b.Samples%m
		lo := mb*size + min(mb, extra)
		hi := lo + size
		if mb < extra {
			hi++
		}
		act := b.Inputs[lo*din : hi*din]
		for _, s := range st {
			out, err := s.Forward(ctx, mb, act)
			require.NoError(t, err)
			act = out
		}
		grad := make([]float32, len(act))
		l, err := st[len(st)-1].Loss(ctx, mb, act, b.Targets[lo*dlast:hi*dlast], grad)
		require.NoError(t, err)
		loss += l
		for s := len(st) - 1; s >= 0; s-- {
			var dIn []float32
			if s > 0 {
				dIn = make([]float32, len(st[s].ins[mb]))
			}
			require.NoError(t, st[s].Backward(ctx, mb, grad, dIn))
			grad = dIn
		}
	}
	for _, s := range st {
		for _, p := range s.Params() {
			for i := range p.Grad {
				if m > 1 {
					p.Grad[i] /= float32(m)
				}
			}
		}
	}
	return loss / float64(m)
}

// pipeCommConfig bounds every call (a hang fails the test) and keeps the
// aborts the failure tests provoke out of the test log.
var pipeCommConfig = collective.Config{Timeout: time.Minute, Logger: slog.New(slog.DiscardHandler)}

// pipeLocal makes n in-process ranks, closed when the test ends.
func pipeLocal(t testing.TB, n int) []*collective.Comm {
	t.Helper()
	comms, err := collective.LocalConfig(n, pipeCommConfig)
	require.NoError(t, err)
	t.Cleanup(func() { testjob.CloseAll(comms) })
	return comms
}

// pipeTCP makes n ranks in this process over TCP loopback.
func pipeTCP(t testing.TB, n int) []*collective.Comm {
	t.Helper()
	cfg := pipeCommConfig
	cfg.Transport = "tcp"
	comms, err := collective.LocalNetwork(context.Background(), n, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { testjob.CloseAll(comms) })
	return comms
}

// rankStages is rank's share of all: stages rank, rank+P, ...
func rankStages(all []*pipeAffine, rank, ranks int) []Stage {
	var st []Stage
	for s := rank; s < len(all); s += ranks {
		st = append(st, all[s])
	}
	return st
}

// newPipelines forms a pipeline on every rank of comms, each with its own
// copy of the model's stages.
func newPipelines(t testing.TB, comms []*collective.Comm, model pipeModel, opts PipelineOptions) ([]*Pipeline, [][]*pipeAffine) {
	t.Helper()
	n := len(comms)
	pipes := make([]*Pipeline, n)
	copies := make([][]*pipeAffine, n)
	testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
		copies[r] = model.build()
		var err error
		pipes[r], err = NewPipeline(context.Background(), comms[r], rankStages(copies[r], r, n), opts)
		return err
	}))
	t.Cleanup(func() {
		for _, p := range pipes {
			p.Close()
		}
	})
	return pipes, copies
}
