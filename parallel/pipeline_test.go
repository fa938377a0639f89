package parallel

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
)

// pipeVariants are the schedules and stages per rank the equivalence test
// runs (1F1B holds one stage per rank).
var pipeVariants = []struct {
	schedule PipelineSchedule
	chunks   int
}{{GPipe, 1}, {GPipe, 2}, {OneFOneB, 1}, {Interleaved1F1B, 1}, {Interleaved1F1B, 2}}

// stepSamples is the batch size of each of the 5 steps: micro-batches of
// different sizes, and a smaller last batch (as an epoch's last), so that
// activation lengths change from micro-batch to micro-batch and step to step.
func stepSamples(m int) []int { return []int{3 * m, 3*m + 1, 2*m + m/2, 4 * m, m} }

// TestPipelineEqualsSequential: for P = 1..4, M = 1..8, each schedule and
// v = 1..2, the parameters after 5 steps (and every step's loss, on every
// rank) are bitwise those of the same stages run one after the other in one
// process. The data are random floats, not small integers: the pipeline
// does the very same float operations in the same order (each stage's
// gradients accumulate in micro-batch order), so no rounding may differ.
func TestPipelineEqualsSequential(t *testing.T) {
	pipeNoLeaks(t)
	for _, variant := range pipeVariants {
		for p := 1; p <= 4; p++ {
			for m := 1; m <= 8; m++ {
				name := fmt.Sprintf("%v/v=%d/P=%d/M=%d", variant.schedule, variant.chunks, p, m)
				t.Run(name, func(t *testing.T) {
					model := pipeModel{seed: uint64(100*p + m)}
					for s := 0; s <= p*variant.chunks; s++ {
						model.widths = append(model.widths, 2+(s*5+m)%4)
					}
					runEquivalence(t, pipeLocal(t, p), model, m, PipelineOptions{Schedule: variant.schedule, Microbatches: m})
				})
			}
		}
	}
}

// TestPipelineEqualsSequentialOverTCP is the same over real sockets, where
// messages arrive in pieces and at their own pace.
func TestPipelineEqualsSequentialOverTCP(t *testing.T) {
	pipeNoLeaks(t)
	for _, variant := range pipeVariants {
		t.Run(fmt.Sprintf("%v/v=%d", variant.schedule, variant.chunks), func(t *testing.T) {
			const p, m = 3, 5
			comms := pipeTCP(t, p)
			model := pipeModel{seed: 77}
			for s := 0; s <= p*variant.chunks; s++ {
				model.widths = append(model.widths, 40+s)
			}
			runEquivalence(t, comms, model, m, PipelineOptions{Schedule: variant.schedule, Microbatches: m})
		})
	}
}

func runEquivalence(t *testing.T, comms []*collective.Comm, model pipeModel, m int, opts PipelineOptions) {
	ctx := context.Background()
	p := len(comms)
	pipes, copies := newPipelines(t, comms, model, opts)
	ref := model.build()
	const lr = 0.125
	for step, samples := range stepSamples(m) {
		batch := model.batch(step, samples)
		want := sequentialStep(t, ref, batch, m)
		losses := make([]float64, p)
		testjob.RequireAllOK(t, testjob.Each(p, func(r int) error {
			b := batch
			if r != 0 && r != p-1 {
				b = Batch{} // the middle ranks read nothing of it
			}
			var err error
			losses[r], err = pipes[r].Step(ctx, b)
			pipeSGD(pipes[r].Params(), lr)
			return err
		}))
		for _, s := range ref {
			pipeSGD(s.Params(), lr)
		}
		for r, l := range losses {
			require.Equal(t, math.Float64bits(want), math.Float64bits(l), "step %d rank %d: loss %v, sequential %v", step, r, l, want)
		}
	}
	for s, st := range ref {
		got := copies[s%p][s]
		for k, prm := range st.Params() {
			requireBitwise(t, prm.Data, got.Params()[k].Data, fmt.Sprintf("stage %d %s", s, prm.Name))
		}
	}
}

func requireBitwise(t *testing.T, want, got []float32, what string) {
	t.Helper()
	require.Len(t, got, len(want), what)
	for i := range want {
		if math.Float32bits(want[i]) != math.Float32bits(got[i]) {
			require.Failf(t, "not bitwise equal", "%s, element %d: want %v, got %v", what, i, want[i], got[i])
		}
	}
}

// TestPipelineStageErrorAbortsEveryRank: a stage's error from forward or
// backward fails the step on every rank, promptly, with that error as the
// cause; the failing rank's error matches it with errors.Is. The pipeline
// stays failed.
func TestPipelineStageErrorAbortsEveryRank(t *testing.T) {
	pipeNoLeaks(t)
	for _, c := range []struct {
		name            string
		stage, fwd, bwd int
	}{
		{"forward of the first stage", 0, 2, -1},
		{"forward of a middle stage", 1, 0, -1},
		{"loss stage's backward", 3, -1, 3},
		{"backward of a middle stage", 2, -1, 1},
		{"last backward of the first stage, after the others' parts ended", 0, -1, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			const p, m = 4, 4
			comms := pipeLocal(t, p)
			model := pipeModel{widths: []int{3, 4, 4, 4, 2}, seed: 7}
			pipes, copies := newPipelines(t, comms, model, PipelineOptions{Schedule: OneFOneB, Microbatches: m})
			bad := copies[c.stage][c.stage]
			bad.failForward, bad.failBackward, bad.failStep = c.fwd, c.bwd, 2
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			b := model.batch(0, 8)
			testjob.RequireAllOK(t, testjob.Each(p, func(r int) error { _, err := pipes[r].Step(ctx, b); return err }))
			errs := testjob.Each(p, func(r int) error { _, err := pipes[r].Step(ctx, b); return err })
			require.NoError(t, ctx.Err(), "the step ended by the timeout, not by the error")
			for r, err := range errs {
				require.Error(t, err, "rank %d", r)
				require.ErrorContains(t, err, errStageFailed.Error(), "rank %d", r)
				require.ErrorContains(t, err, fmt.Sprintf("pipeline rank %d: stage %d", c.stage, c.stage), "rank %d names the stage", r)
				if r == c.stage {
					require.ErrorIs(t, err, errStageFailed)
				} else {
					require.ErrorIs(t, err, collective.ErrAborted, "rank %d", r)
				}
				_, again := pipes[r].Step(ctx, b)
				require.Equal(t, err, again, "rank %d: a failed pipeline stays failed", r)
			}
		})
	}
}

func TestNewPipelineRejectsBadArguments(t *testing.T) {
	pipeNoLeaks(t)
	ctx := context.Background()
	model := pipeModel{widths: []int{2, 3, 2}, seed: 1}
	t.Run("no loss on the last stage", func(t *testing.T) {
		comms := pipeLocal(t, 2)
		errs := testjob.Each(2, func(r int) error {
			st := rankStages(model.build(), r, 2)
			if r == 1 {
				st[0] = struct{ Stage }{st[0]} // hides Loss
			}
			p, err := NewPipeline(ctx, comms[r], st, PipelineOptions{})
			if p != nil {
				p.Close()
			}
			return err
		})
		require.ErrorContains(t, errs[1], "has no Loss method")
		require.ErrorContains(t, errs[0], "rank 1 could not form its part")
	})
	t.Run("ranks disagree", func(t *testing.T) {
		comms := pipeLocal(t, 2)
		errs := testjob.Each(2, func(r int) error {
			p, err := NewPipeline(ctx, comms[r], rankStages(model.build(), r, 2), PipelineOptions{Microbatches: 2 + r})
			if p != nil {
				p.Close()
			}
			return err
		})
		for r, err := range errs {
			require.ErrorIs(t, err, ErrPipeline, "rank %d", r)
			require.ErrorContains(t, err, "rank 1 has schedule 1f1b, 3 micro-batches, 1 stages; rank 0 has 1f1b, 2, 1", "rank %d", r)
		}
	})
	t.Run("1f1b with two stages per rank", func(t *testing.T) {
		comms := pipeLocal(t, 1)
		_, err := NewPipeline(ctx, comms[0], rankStages(model.build(), 0, 1), PipelineOptions{Schedule: OneFOneB})
		require.ErrorIs(t, err, ErrBadPlan)
	})
	t.Run("no stages, nil stage, bad parameter", func(t *testing.T) {
		comms := pipeLocal(t, 1)
		_, err := NewPipeline(ctx, comms[0], nil, PipelineOptions{})
		require.ErrorContains(t, err, "has no stages")
		_, err = NewPipeline(ctx, comms[0], []Stage{nil}, PipelineOptions{})
		require.ErrorContains(t, err, "is nil")
		st := model.build()
		st[0].w.Grad = st[0].w.Grad[:1]
		_, err = NewPipeline(ctx, comms[0], []Stage{st[0], st[1]}, PipelineOptions{})
		require.ErrorContains(t, err, "Grad is not as long as its Data")
		_, err = NewPipeline(ctx, nil, nil, PipelineOptions{})
		require.ErrorIs(t, err, ErrPipeline)
	})
}

// TestPipelineBadBatchAbortsEveryRank: a batch the first or last stage
// cannot split fails every rank's step, with the reason.
func TestPipelineBadBatchAbortsEveryRank(t *testing.T) {
	pipeNoLeaks(t)
	model := pipeModel{widths: []int{3, 4, 2}, seed: 3}
	for _, c := range []struct {
		name   string
		batch  func(r int) Batch
		reason string
	}{
		{"fewer samples than micro-batches", func(int) Batch { return model.batch(0, 3) }, "a batch of 3 samples cannot make 4 micro-batches"},
		{"ragged inputs", func(int) Batch { b := model.batch(0, 8); b.Inputs = b.Inputs[1:]; return b }, "23 inputs are not 8 rows"},
		{"ragged targets", func(int) Batch { b := model.batch(0, 8); b.Targets = b.Targets[1:]; return b }, "15 targets are not 8 rows"},
		{"ends disagree", func(r int) Batch { return model.batch(0, 8+r) }, "both ends need the same Batch.Samples"},
	} {
		t.Run(c.name, func(t *testing.T) {
			comms := pipeLocal(t, 2)
			pipes, _ := newPipelines(t, comms, model, PipelineOptions{Microbatches: 4})
			errs := testjob.Each(2, func(r int) error { _, err := pipes[r].Step(context.Background(), c.batch(r)); return err })
			for r, err := range errs {
				require.ErrorContains(t, err, c.reason, "rank %d", r)
			}
		})
	}
}

// TestPipelineCancelledContext: a step whose context ends fails on every
// rank instead of hanging: rank 0 never comes to the step.
func TestPipelineCancelledContext(t *testing.T) {
	pipeNoLeaks(t)
	comms := pipeLocal(t, 3)
	model := pipeModel{widths: []int{2, 2, 2, 2}, seed: 5}
	pipes, _ := newPipelines(t, comms, model, PipelineOptions{Microbatches: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	errs := testjob.Each(3, func(r int) error {
		if r == 0 {
			<-ctx.Done()
			_, err := pipes[r].Step(ctx, model.batch(0, 4))
			return err
		}
		_, err := pipes[r].Step(ctx, model.batch(0, 4))
		return err
	})
	for r, err := range errs {
		require.Error(t, err, "rank %d", r)
		require.True(t, errors.Is(err, context.DeadlineExceeded) || errors.Is(err, collective.ErrAborted), "rank %d: %v", r, err)
	}
}

// pipeNoLeaks checks, once the test and its cleanups (which close the
// pipelines and communicators) are done, that no goroutine it started runs.
func pipeNoLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}
