package shard_test

import (
	"fmt"
	"testing"

	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/shard"
)

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
			d := testjob.NewDriver(t, n, func(r int) error {
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
			d.RequireNoAllocs(t, "step")
		})
	}
}
