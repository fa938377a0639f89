package shard_test

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/shard"
)

var ctx = context.Background()

// testTimeout bounds every collective call of these tests: a hang fails
// the test instead of stalling it.
const testTimeout = 30 * time.Second

func localComms(n int) ([]*collective.Comm, error) {
	return collective.LocalConfig(n, collective.Config{Timeout: testTimeout})
}

// leakCheck checks, once the test and its cleanups are done, that no
// goroutine is left.
func leakCheck(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// layout is a model's unit structure: per unit, its parameters' lengths.
type layout [][]int

// oddLayout has units that no N from 2 to 6 divides (10, 17), and units
// smaller than N (1, 4).
var oddLayout = layout{{7, 3}, {1}, {10, 2, 5}, {4}}

func (l layout) size() int {
	n := 0
	for _, u := range l {
		for _, m := range u {
			n += m
		}
	}
	return n
}

// model makes l's parameters with the same initial values on every call:
// small multiples of 1/4, exactly representable.
func (l layout) model() [][]*parallel.Param {
	units := make([][]*parallel.Param, len(l))
	for u, sizes := range l {
		for j, n := range sizes {
			p := &parallel.Param{Name: fmt.Sprintf("u%d.p%d", u, j), Data: make([]float32, n), Grad: make([]float32, n)}
			for i := range p.Data {
				p.Data[i] = float32((i*7+u*3+j*5)%9-4) / 4
			}
			units[u] = append(units[u], p)
		}
	}
	return units
}

func flat(units [][]*parallel.Param) []*parallel.Param {
	var ps []*parallel.Param
	for _, u := range units {
		ps = append(ps, u...)
	}
	return ps
}

// batchSamples is the global batch of every step of the exact trainer.
const batchSamples = 12

// exactGrad is sample s's gradient of element i of p at step t: a small
// integer that depends on the element's current value (so a wrong gathered
// parameter changes it) and on s, t and i.
func exactGrad(p *parallel.Param, s, t, i int) float32 {
	h := uint32(s*7919+t*104729+i*31+len(p.Name)*13) * 2654435761
	v := int(h>>29) - 4 // [-4, 3]
	d := math.Floor(float64(p.Data[i]) * 2)
	return float32(v + int(max(-4, min(4, d))))
}

// rankGrad writes (adds, with add) rank's gradient of p for step t: N times
// the sum of the sample gradients of its share of the global batch. Every
// value is an integer far below 2^24, a multiple of N: every partial sum
// of any reduction over the ranks is exact, and so is the division by N.
// The average over the ranks is the sum over the whole batch, whatever N:
// runs at different N train alike.
func rankGrad(p *parallel.Param, rank, size, t int, add bool) {
	lo, hi := batchSamples*rank/size, batchSamples*(rank+1)/size
	for i := range p.Grad {
		var g float32
		for s := lo; s < hi; s++ {
			g += exactGrad(p, s, t, i)
		}
		g *= float32(size)
		if add {
			p.Grad[i] += g
		} else {
			p.Grad[i] = g
		}
	}
}

// checksum is a float64 sum of a unit's parameters, which the trainers
// record in forward: the gathered values must be the same everywhere.
func checksum(ps []*parallel.Param) float64 {
	var s float64
	for _, p := range ps {
		for _, v := range p.Data {
			s += float64(v)
		}
	}
	return s
}

// onRanks runs fn on every rank of collective.Local(n) and fails t with
// any rank's error.
func onRanks(t *testing.T, n int, fn func(c *collective.Comm) error) {
	t.Helper()
	comms, err := localComms(n)
	require.NoError(t, err)
	defer testjob.CloseAll(comms)
	testjob.RequireAllOK(t, testjob.Each(n, func(r int) error { return fn(comms[r]) }))
}

// result is what a training run ends with on one rank.
type result struct {
	params [][]float32 // per parameter, in order
	trace  []float64   // forward checksums, per step and unit
}

// optimizer makes the run's optimizer rule.
type optimizer func() nn.Optimizer

var (
	sgd   optimizer = func() nn.Optimizer { return &nn.SGD{LR: 1.0 / 16, Momentum: 0.5} }
	adam  optimizer = func() nn.Optimizer { return nn.NewAdam(0.01) }
	adamw optimizer = func() nn.Optimizer { return nn.NewAdamW(0.01, 0.1) }
)

// trainDDP trains l with parallel.DataParallel for steps steps of micro
// micro-batches each (the step's batch gradient split into micro parts: at
// step t micro-batch k uses "step" t·micro+k).
func trainDDP(c *collective.Comm, l layout, opt optimizer, steps, micro int) (result, error) {
	units := l.model()
	params := flat(units)
	dp, err := parallel.NewDataParallel(ctx, c, params, parallel.DataParallelOptions{})
	if err != nil {
		return result{}, err
	}
	defer dp.Close()
	po, err := nn.NewParamOptimizer(opt(), params)
	if err != nil {
		return result{}, err
	}
	var res result
	for t := range steps {
		for k := range micro {
			dp.SetSync(k == micro-1)
			for _, ps := range units {
				res.trace = append(res.trace, checksum(ps))
			}
			for _, p := range params {
				rankGrad(p, c.Rank(), c.Size(), t*micro+k, false)
			}
			if err := dp.Sync(ctx); err != nil {
				return res, err
			}
		}
		if err := po.Step(); err != nil {
			return res, err
		}
	}
	for _, p := range params {
		res.params = append(res.params, append([]float32(nil), p.Data...))
	}
	return res, nil
}

// fsdpRun is how the FSDP trainer drives the hooks.
type fsdpRun struct {
	from, steps, micro int // steps [from, steps) of micro micro-batches
	// keepLast leaves the last unit gathered from forward into backward,
	// as FSDP does for the root module.
	keepLast bool
}

// trainFSDP trains l under fs with the FSDP hooks, the same batches as
// trainDDP.
func trainFSDP(fs *shard.FSDP, units [][]*parallel.Param, opt nn.Optimizer, run fsdpRun) (result, error) {
	c := fs.Comm()
	var res result
	last := len(units) - 1
	for t := run.from; t < run.steps; t++ {
		for k := range run.micro {
			if err := fs.SetGradSync(k == run.micro-1); err != nil {
				return res, err
			}
			for u, ps := range units {
				if err := fs.Gather(ctx, u); err != nil {
					return res, err
				}
				res.trace = append(res.trace, checksum(ps))
				if u == last && run.keepLast {
					continue
				}
				if err := fs.Release(u); err != nil {
					return res, err
				}
			}
			for u := last; u >= 0; u-- {
				if err := fs.GatherBackward(ctx, u); err != nil {
					return res, err
				}
				for _, p := range units[u] {
					rankGrad(p, c.Rank(), c.Size(), t*run.micro+k, true)
				}
				if err := fs.ReduceGrads(ctx, u); err != nil {
					return res, err
				}
				if err := fs.Release(u); err != nil {
					return res, err
				}
			}
		}
		if err := fs.Step(ctx, opt); err != nil {
			return res, err
		}
	}
	res.params, _ = fullParams(fs, units)
	return res, nil
}

// fullParams gathers every unit and copies its parameters.
func fullParams(fs *shard.FSDP, units [][]*parallel.Param) ([][]float32, error) {
	var out [][]float32
	for u, ps := range units {
		if err := fs.Gather(ctx, u); err != nil {
			return nil, err
		}
		for _, p := range ps {
			out = append(out, append([]float32(nil), p.Data...))
		}
		if err := fs.Release(u); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// requireBitwise compares two runs' parameters and traces bit for bit.
func requireBitwise(t *testing.T, want, got result, msg string, args ...any) {
	t.Helper()
	what := fmt.Sprintf(msg, args...)
	require.Equal(t, len(want.trace), len(got.trace), "%s: forward trace length", what)
	for i := range want.trace {
		require.Equal(t, math.Float64bits(want.trace[i]), math.Float64bits(got.trace[i]), "%s: forward checksum #%d: %v vs %v", what, i, want.trace[i], got.trace[i])
	}
	require.Equal(t, len(want.params), len(got.params), what)
	for j := range want.params {
		require.Equal(t, len(want.params[j]), len(got.params[j]), what)
		for i := range want.params[j] {
			require.Equal(t, math.Float32bits(want.params[j][i]), math.Float32bits(got.params[j][i]),
				"%s: parameter #%d element %d: %v vs %v", what, j, i, want.params[j][i], got.params[j][i])
		}
	}
}
