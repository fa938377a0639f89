package parallel

import (
	"context"
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
)

// grid2D is one world rank's place in a stages × replicas grid: rank w is
// stage w%P of replica w/P.
type grid2D struct {
	pipe *Pipeline
	dp   *DataParallel
	all  []*pipeAffine // this rank's copy of every stage (it uses its own)
}

// newGrid2D splits world into pipelines (one per replica) and data-parallel
// groups (one per stage), and forms a Pipeline whose GradSync is the
// stage's DataParallel on every rank.
func newGrid2D(t *testing.T, world []*collective.Comm, stages int, model pipeModel, opts PipelineOptions) []*grid2D {
	t.Helper()
	n := len(world)
	grid := make([]*grid2D, n)
	testjob.RequireAllOK(t, testjob.Each(n, func(w int) error {
		ctx := context.Background()
		stage, replica := w%stages, w/stages
		pp, err := world[w].Split(ctx, replica, stage)
		if err != nil {
			return err
		}
		t.Cleanup(func() { pp.Close() })
		dpc, err := world[w].Split(ctx, stage, replica)
		if err != nil {
			return err
		}
		t.Cleanup(func() { dpc.Close() })
		g := &grid2D{all: model.build()}
		mine := rankStages(g.all, stage, stages)
		if g.dp, err = NewDataParallel(ctx, dpc, StageParams(mine), DataParallelOptions{FirstBucketBytes: 64, BucketBytes: 128}); err != nil {
			return err
		}
		t.Cleanup(func() { g.dp.Close() })
		o := opts
		o.GradSync = g.dp
		if g.pipe, err = NewPipeline(ctx, pp, mine, o); err != nil {
			return err
		}
		t.Cleanup(func() { g.pipe.Close() })
		grid[w] = g
		return nil
	}))
	return grid
}

// signSGD moves each parameter by one against its gradient's sign: an
// update that keeps small integers small integers, so that every step of
// training stays exactly representable and bitwise comparisons stay fair.
func signSGD(params []*Param) {
	for _, p := range params {
		for i, g := range p.Grad {
			switch {
			case g > 0:
				p.Data[i]--
			case g < 0:
				p.Data[i]++
			}
		}
	}
}

// TestPipelineTimesDataParallelEqualsOneProcess: 4 ranks as 2 stages × 2
// replicas (and 6 as 3 × 2, 4 as 2 stages of 2 chunks × 2 replicas), each
// stage's replicas syncing gradients with DataParallel while the pipeline's
// last backwards run, train exactly as one process does on the global batch:
// every step's gradients and loss, and the parameters after 5 steps, are
// bitwise equal. The data are small integers (exactly representable), since
// the 2-D sums group the micro-batches differently.
func TestPipelineTimesDataParallelEqualsOneProcess(t *testing.T) {
	pipeNoLeaks(t)
	for _, c := range []struct {
		stages, replicas, chunks, m int
		schedule                    PipelineSchedule
	}{
		{2, 2, 1, 4, OneFOneB}, {2, 2, 1, 2, GPipe}, {3, 2, 1, 4, OneFOneB}, {2, 2, 2, 4, Interleaved1F1B},
	} {
		t.Run(fmt.Sprintf("%d stages × %d replicas, %v v=%d M=%d", c.stages, c.replicas, c.schedule, c.chunks, c.m), func(t *testing.T) {
			ctx := context.Background()
			n := c.stages * c.replicas
			world := pipeLocal(t, n)
			model := pipeModel{seed: 11, exact: true}
			for s := 0; s <= c.stages*c.chunks; s++ {
				model.widths = append(model.widths, 2+s%3)
			}
			grid := newGrid2D(t, world, c.stages, model, PipelineOptions{Schedule: c.schedule, Microbatches: c.m})
			ref := model.build()
			perReplica := 2 * c.m
			for step := range 5 {
				global := model.batch(step, perReplica*c.replicas)
				want := sequentialStep(t, ref, global, c.m*c.replicas)
				losses := make([]float64, n)
				testjob.RequireAllOK(t, testjob.Each(n, func(w int) error {
					replica := w / c.stages
					b := Batch{
						Samples: perReplica,
						Inputs:  global.Inputs[replica*perReplica*model.widths[0] : (replica+1)*perReplica*model.widths[0]],
						Targets: global.Targets[replica*perReplica*model.widths[len(model.widths)-1] : (replica+1)*perReplica*model.widths[len(model.widths)-1]],
					}
					var err error
					losses[w], err = grid[w].pipe.Step(ctx, b)
					return err
				}))
				for w, g := range grid {
					for s := w % c.stages; s < len(ref); s += c.stages {
						for k, prm := range ref[s].Params() {
							requireBitwise(t, prm.Grad, g.all[s].Params()[k].Grad, fmt.Sprintf("step %d, rank %d, stage %d gradient %s", step, w, s, prm.Name))
						}
					}
				}
				for w := range n {
					// Each replica's loss is its half's mean; their mean is the whole batch's.
					var mean float64
					for rep := range c.replicas {
						mean += losses[rep*c.stages+w%c.stages]
					}
					require.Equal(t, math.Float64bits(want), math.Float64bits(mean/float64(c.replicas)), "step %d", step)
				}
				for _, g := range grid {
					signSGD(g.pipe.Params())
				}
				signSGD(StageParams(rankStages(ref, 0, 1)))
			}
			for w, g := range grid {
				for s := w % c.stages; s < len(ref); s += c.stages {
					for k, prm := range ref[s].Params() {
						requireBitwise(t, prm.Data, g.all[s].Params()[k].Data, fmt.Sprintf("rank %d, stage %d %s after 5 steps", w, s, prm.Name))
					}
				}
			}
		})
	}
}

// TestPipelineErrorStopsTheReplicas: a stage's error in one replica's
// pipeline fails the step of that pipeline's ranks and, through the
// aborted data-parallel groups, of the other replica's too: no rank hangs
// in a gradient sync whose partner gave up.
func TestPipelineErrorStopsTheReplicas(t *testing.T) {
	pipeNoLeaks(t)
	const stages, replicas, m = 2, 2, 2
	world := pipeLocal(t, stages*replicas)
	model := pipeModel{seed: 12, exact: true, widths: []int{2, 3, 2}}
	grid := newGrid2D(t, world, stages, model, PipelineOptions{Microbatches: m})
	bad := grid[0].all[0] // stage 0 of replica 0
	bad.failBackward, bad.failStep = 1, 1
	b := model.batch(0, 4)
	errs := testjob.Each(len(grid), func(w int) error { _, err := grid[w].pipe.Step(context.Background(), b); return err })
	for w, err := range errs {
		require.Error(t, err, "rank %d", w)
		require.ErrorContains(t, err, errStageFailed.Error(), "rank %d", w)
	}
}
