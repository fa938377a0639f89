package ps_test

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/internal/testmodel"
	"github.com/ringo-ml/ringo/parallel/ps"
)

// pullRecord is what a fast worker saw when a Pull returned.
type pullRecord struct {
	worker     int
	clock      int // the fast worker's clock at the pull
	slowIssued int // pushes the slow worker had issued by then
	reported   int // the slow worker's clock as the servers reported it
}

// Under BoundedStaleness(s), with one worker held back by a gate the test
// opens one push at a time, no fast worker's Pull ever returns at a clock
// more than s ahead of the slow worker's pushes, and the fast workers do
// get exactly s ahead (the bound is reached, not merely respected because
// everyone waits for everyone).
func TestBoundedStalenessHoldsFastWorkersWithinSClocks(t *testing.T) {
	for _, s := range []int{0, 1, 3} {
		t.Run(fmt.Sprintf("s=%d", s), func(t *testing.T) {
			const S, W, slowPushes = 2, 3, 4
			j := startJob(t, S, W, ps.Options{Consistency: ps.BoundedStaleness(s), Optimizer: &nn.SGD{LR: 0.125}, ChunkBytes: 400},
				func(int) *testmodel.Model { return testmodel.New(testmodel.HeadSizes(), false) })
			var slowIssued atomic.Int64
			gate := make(chan struct{})
			records := make(chan pullRecord, 100)
			fastPulls := slowPushes + s + 1 // the last one needs every slow push
			errs := make(chan error, W)
			go func() { // the slow worker: one push per token
				w := j.workers[0]
				for k := range slowPushes {
					<-gate
					j.models[0].Backward(k*perWorker, perWorker, 1, nil)
					slowIssued.Add(1)
					if err := w.Push(ctx).Wait(); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
			for f := 1; f < W; f++ {
				go func() {
					w, m := j.workers[f], j.models[f]
					for c := range fastPulls {
						if err := w.Pull(ctx).Wait(); err != nil {
							errs <- err
							return
						}
						records <- pullRecord{worker: f, clock: c, slowIssued: int(slowIssued.Load()), reported: w.Status().Clocks[0]}
						m.Backward((c*W+f)*perWorker, perWorker, 1, nil)
						if err := w.Push(ctx).Wait(); err != nil {
							errs <- err
							return
						}
					}
					errs <- nil
				}()
			}
			var all []pullRecord
			reached := map[int]int{} // fast worker: its highest pull clock
			take := func(want int) {
				for reached[1] < want || reached[2] < want {
					r := <-records
					all = append(all, r)
					reached[r.worker] = max(reached[r.worker], r.clock)
				}
			}
			for k := range slowPushes {
				// With the slow worker at k, the fast ones get as far as a
				// pull at clock k+s and then block.
				take(k + s)
				if k == 1 {
					// The servers' clocks say so: slow at 1, the fast ones
					// s+1 pushes further (pushed after their last pull).
					require.Eventually(t, func() bool {
						return slices.Equal(j.servers[0].Status().Clocks, []int{1, 2 + s, 2 + s})
					}, testTimeout, time.Millisecond, "server 0's clocks: %v", j.servers[0].Status().Clocks)
				}
				gate <- struct{}{}
			}
			take(fastPulls - 1)
			for range W {
				require.NoError(t, <-errs)
			}
			ahead := 0
			for _, r := range all {
				require.LessOrEqual(t, r.clock-r.slowIssued, s, "worker %d pulled at clock %d with the slow worker at %d", r.worker, r.clock, r.slowIssued)
				require.LessOrEqual(t, r.clock-r.reported, s, "the servers reported the slow worker at %d", r.reported)
				ahead = max(ahead, r.clock-r.slowIssued)
			}
			assert.Equal(t, s, ahead, "the fast workers reach the bound")
			for srv, err := range j.finish() {
				require.NoError(t, err, "server %d", srv)
			}
			assert.Equal(t, slowPushes+2*fastPulls, j.servers[0].Status().Updates, "every push is one update")
		})
	}
}

// Under Async every push is applied as it arrives, on its own: a worker
// pulls its own updates while the others push nothing, and the servers
// count one update per push.
func TestAsyncAppliesEveryPushOnArrival(t *testing.T) {
	const S, W = 2, 2
	opt := &nn.SGD{LR: 0.125}
	j := startJob(t, S, W, ps.Options{Consistency: ps.Async, Optimizer: opt, ChunkBytes: 400}, func(int) *testmodel.Model { return testmodel.New(testmodel.HeadSizes(), false) })
	// Worker 0 alone: three steps; its values are what one process
	// applying the same gradients computes.
	ref := testmodel.New(testmodel.HeadSizes(), false)
	m := j.models[0]
	for step := range 3 {
		m.Backward(step*perWorker, perWorker, 1, nil)
		ref.Backward(step*perWorker, perWorker, 1, nil)
		require.NoError(t, j.workers[0].PushPull(ctx).Wait())
		for _, p := range ref.Params {
			require.NoError(t, opt.Update(step+1, p.Data, p.Grad, nil))
		}
		require.NoError(t, testmodel.SameBits(m.Params, ref.Params), "step %d", step)
	}
	assert.Equal(t, 3, j.servers[0].Status().Updates)
	// Worker 1, still at clock 0, pulls those values too.
	require.NoError(t, j.workers[1].Pull(ctx).Wait())
	require.NoError(t, testmodel.SameBits(j.models[1].Params, ref.Params))
	assert.Equal(t, []int{3, 0}, j.workers[1].Status().Clocks)
	for srv, err := range j.finish() {
		require.NoError(t, err, "server %d", srv)
	}
}

// Async training of a linear regression (a learnable target) by 4
// workers, each on its own samples, brings the held-out loss down by far.
func TestAsyncTrainingConverges(t *testing.T) {
	const S, W, steps, dim = 2, 4, 150, 40
	newRegression := func() []*parallel.Param {
		return []*parallel.Param{
			{Name: "w", Data: make([]float32, dim), Grad: make([]float32, dim)},
			{Name: "b", Data: make([]float32, 1), Grad: make([]float32, 1)},
		}
	}
	trueW := func(i int) float32 { return float32(i%7-3) / 4 }
	x := func(s, i int) float32 { return float32((s*31+i*17)%11-5) / 5 }
	pred := func(p []*parallel.Param, s int) float32 {
		y := p[1].Data[0]
		for i, w := range p[0].Data {
			y += w * x(s, i)
		}
		return y
	}
	target := func(s int) float32 {
		y := float32(0.5)
		for i := range dim {
			y += trueW(i) * x(s, i)
		}
		return y
	}
	loss := func(p []*parallel.Param) float64 {
		total := 0.0
		for s := 100000; s < 100256; s++ {
			d := float64(pred(p, s) - target(s))
			total += d * d
		}
		return total / 256
	}
	comms := local(t, S+W)
	opts := ps.Options{Servers: S, Consistency: ps.Async, Optimizer: &nn.SGD{LR: 0.02}}
	params := make([][]*parallel.Param, W)
	// The initial model's (a worker's first pull may already see the
	// others' first pushes).
	before := loss(newRegression())
	servers := make([]*ps.Server, S)
	testjob.RequireAllOK(t, testjob.Each(S+W, func(r int) error {
		if r < S {
			srv, err := ps.NewServer(ctx, comms[r], newRegression(), opts)
			if err != nil {
				return err
			}
			servers[r] = srv
			return srv.Serve(ctx)
		}
		w := r - S
		p := newRegression()
		params[w] = p
		wk, err := ps.NewWorker(ctx, comms[r], p, opts)
		if err != nil {
			return err
		}
		defer wk.Close()
		for step := range steps {
			clear(p[0].Grad)
			p[1].Grad[0] = 0
			for k := range 8 {
				s := (step*W+w)*8 + k
				d := (pred(p, s) - target(s)) / 8
				for i := range dim {
					p[0].Grad[i] += d * x(s, i)
				}
				p[1].Grad[0] += d
			}
			if err := wk.PushPull(ctx).Wait(); err != nil {
				return err
			}
		}
		return wk.Close()
	}))
	// The final model: the servers' slices, once every worker has closed.
	final := newRegression()
	for _, sl := range ps.Layout(final, S) {
		vals := make([]float32, dim+1)
		n := servers[sl.Server].Values(vals)
		copy(final[sl.Index].Data[sl.Lo:sl.Hi], vals[sl.Offset:n])
	}
	for _, srv := range servers {
		srv.Close()
	}
	after := loss(final)
	t.Logf("held-out squared error: %.4f before, %.3g after %d async pushes", before, after, steps*W)
	assert.Less(t, after, before/100)
}
