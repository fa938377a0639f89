package shard_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/shard"
)

// driver runs one step on every rank: rank 0 on the calling goroutine, the
// others on goroutines that wait for a signal, so that run itself
// allocates nothing.
type driver struct {
	step  func(rank int) error
	start []chan struct{}
	done  chan error
}

func newDriver(t *testing.T, n int, step func(rank int) error) *driver {
	d := &driver{step: step, start: make([]chan struct{}, n), done: make(chan error, n)}
	stop := make(chan struct{})
	for r := range n {
		d.start[r] = make(chan struct{})
	}
	exited := make(chan struct{}, n)
	for r := 1; r < n; r++ {
		go func() {
			defer func() { exited <- struct{}{} }()
			for {
				select {
				case <-d.start[r]:
					d.done <- step(r)
				case <-stop:
					return
				}
			}
		}()
	}
	t.Cleanup(func() {
		close(stop)
		for r := 1; r < n; r++ {
			<-exited
		}
	})
	return d
}

func (d *driver) run() error {
	for r := 1; r < len(d.start); r++ {
		d.start[r] <- struct{}{}
	}
	err := d.step(0)
	for r := 1; r < len(d.start); r++ {
		if e := <-d.done; err == nil {
			err = e
		}
	}
	return err
}

// TestSteadyStepAllocatesNothing: once warm, a whole training step
// (forward gathers with prefetch, backward reductions, Step with Adam)
// allocates nothing, under every strategy, across all ranks.
func TestSteadyStepAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	leakCheck(t)
	for _, o := range []shard.Options{
		{Strategy: shard.FullShard}, {Strategy: shard.FullShard, Prefetch: 2, MaxGathered: 2},
		{Strategy: shard.ShardGradOp}, {Strategy: shard.ShardOptimizer}, {Strategy: shard.NoShard},
		{Strategy: shard.Hybrid, GroupSize: 2},
	} {
		t.Run(fmt.Sprintf("%v/prefetch-%d", o.Strategy, o.Prefetch), func(t *testing.T) {
			const n = 4
			j := newJob(t, n, o, oddLayout.model)
			opts := make([]nn.Optimizer, n)
			for r := range opts {
				opts[r] = adam()
			}
			d := newDriver(t, n, func(r int) error {
				fs, units := j.fss[r], j.units[r]
				for u := range units {
					if err := fs.Gather(ctx, u); err != nil {
						return err
					}
					if err := fs.Release(u); err != nil {
						return err
					}
				}
				for u := len(units) - 1; u >= 0; u-- {
					if err := fs.GatherBackward(ctx, u); err != nil {
						return err
					}
					for _, p := range units[u] {
						p.Grad[0] += 1
					}
					if err := fs.ReduceGrads(ctx, u); err != nil {
						return err
					}
					if err := fs.Release(u); err != nil {
						return err
					}
				}
				return fs.Step(ctx, opts[r])
			})
			for range 3 {
				require.NoError(t, d.run())
			}
			var err error
			allocs := testing.AllocsPerRun(20, func() {
				if e := d.run(); e != nil {
					err = e
				}
			})
			require.NoError(t, err)
			require.Zero(t, allocs, "allocations per step across %d ranks", n)
		})
	}
}
