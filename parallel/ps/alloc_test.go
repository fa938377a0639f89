package ps_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/parallel/internal/testmodel"
	"github.com/ringo-ml/ringo/parallel/ps"
)

// A training step (PushPull on every worker, the servers' work behind it)
// allocates nothing once running, under every consistency model.
func TestSteadyStateStepAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, c := range []ps.Consistency{ps.Sync, ps.Async, ps.BoundedStaleness(1)} {
		t.Run(c.String(), func(t *testing.T) {
			const S, W = 2, 2
			j := startJob(t, S, W, ps.Options{Consistency: c, Optimizer: &nn.SGD{LR: 0.125, Momentum: 0.5}, ChunkBytes: 400},
				func(int) *testmodel.Model { return testmodel.New(testmodel.HeadSizes(), false) })
			start := make([]chan struct{}, W)
			done := make(chan error, W)
			stop := make(chan struct{})
			defer close(stop)
			for w := 1; w < W; w++ {
				start[w] = make(chan struct{})
				go func() {
					for {
						select {
						case <-start[w]:
							done <- j.workers[w].PushPull(ctx).Wait()
						case <-stop:
							return
						}
					}
				}()
			}
			step := func() error {
				for w := 1; w < W; w++ {
					start[w] <- struct{}{}
				}
				err := j.workers[0].PushPull(ctx).Wait()
				for w := 1; w < W; w++ {
					if e := <-done; err == nil {
						err = e
					}
				}
				return err
			}
			for range 3 {
				require.NoError(t, step())
			}
			var err error
			allocs := testing.AllocsPerRun(50, func() {
				if e := step(); e != nil {
					err = e
				}
			})
			require.NoError(t, err)
			require.Zero(t, allocs, "allocations per step, servers and workers")
		})
	}
}
