package pipeproc

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
)

// The grid of the test job: rank w is stage w%stages of replica w/stages.
const (
	stages   = 2
	replicas = 2
	victim   = 2 // stage 0 of replica 1
)

func TestMain(m *testing.M) {
	testjob.RunRank(map[string]func() int{"train": child})
	os.Exit(m.Run())
}

// TestKilledStageStopsEveryRank runs 4 processes as 2 pipeline stages × 2
// data-parallel replicas, training in a loop; the victim's stage stops in
// the middle of a step's forward, and the test SIGKILLs it there. Every
// other rank — its pipeline's, its data-parallel group's, and the last one,
// which shares neither — must fail its step and exit within 2 s, with an
// error that says a peer was lost and names the victim's place.
func TestKilledStageStopsEveryRank(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 4 processes")
	}
	n := stages * replicas
	job := testjob.Start(t, testjob.Config{Ranks: n, Role: "train"})
	job.AwaitFirst(t, 60*time.Second, func(int) string { return "stepping" })
	stuck, _ := job.Rank(victim).Next(t, 60*time.Second)
	require.Equal(t, "stuck in forward", stuck)
	// The victim is in its forward now; the others wait for it in their steps.
	killed := job.Rank(victim).Kill(t)
	for w := range n {
		if w == victim {
			continue
		}
		r := job.Rank(w)
		at, _ := r.Exit(t, 30*time.Second)
		took := at.Sub(killed)
		out := r.Output()
		t.Logf("rank %d (stage %d, replica %d) stopped %v after the kill: %s", w, w%stages, w/stages, took.Round(time.Millisecond), lastLine(out))
		assert.Less(t, took, 4*time.Second, "2 s is the bound; 4 s leaves margin for a loaded 2-core machine")
		assert.Equal(t, 3, r.ExitCode(), "rank %d: %s", w, out)
		assert.Contains(t, out, "STEP FAILED", "rank %d", w)
		assert.Contains(t, out, "communicator aborted", "rank %d", w)
		// Each rank names the victim as its communicators number it: in
		// its pipeline, stage 0 is rank 0; in its data-parallel group,
		// replica 1 is rank 1.
		switch {
		case w/stages == victim/stages: // the victim's pipeline
			assert.Contains(t, out, "rank 0", "rank %d must name the lost stage", w)
		case w%stages == victim%stages: // the victim's data-parallel group
			assert.Contains(t, out, "rank 1", "rank %d must name the lost replica", w)
		}
	}
}

// child is one rank: it trains the grid's model until a step fails, then
// prints the error and exits 3. The victim stops inside its 20th step's
// first forward, saying so, to be killed there.
func child() int {
	ctx := context.Background()
	world, err := collective.Init(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "forming the job:", err)
		return 1
	}
	defer world.Close()
	w := world.Rank()
	stage, replica := w%stages, w/stages
	pp, err := world.Split(ctx, replica, stage)
	if err != nil {
		fmt.Fprintln(os.Stderr, "split:", err)
		return 1
	}
	dpc, err := world.Split(ctx, stage, replica)
	if err != nil {
		fmt.Fprintln(os.Stderr, "split:", err)
		return 1
	}
	st := &affine{din: 8, dout: 8, stuckAt: -1}
	if w == victim {
		st.stuckAt = 20
	}
	st.init()
	dp, err := parallel.NewDataParallel(ctx, dpc, st.Params(), parallel.DataParallelOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "data parallel:", err)
		return 1
	}
	pipe, err := parallel.NewPipeline(ctx, pp, []parallel.Stage{st}, parallel.PipelineOptions{Microbatches: 4, GradSync: dp})
	if err != nil {
		fmt.Fprintln(os.Stderr, "pipeline:", err)
		return 1
	}
	batch := parallel.Batch{Samples: 16, Inputs: make([]float32, 16*8), Targets: make([]float32, 16*8)}
	for i := range batch.Inputs {
		batch.Inputs[i] = float32(i%5) - 2
		batch.Targets[i] = float32(i%3) - 1
	}
	for step := 1; ; step++ {
		if _, err := pipe.Step(ctx, batch); err != nil {
			fmt.Println("STEP FAILED:", err)
			return 3
		}
		if step == 10 {
			fmt.Println("stepping")
		}
	}
}

// affine is the test stage: out = W·x per row, a squared-error loss.
type affine struct {
	din, dout int
	w         *parallel.Param
	ins       [][]float32
	outs      [][]float32
	steps     int
	stuckAt   int
}

func (a *affine) init() {
	a.w = &parallel.Param{Name: "w", Data: make([]float32, a.din*a.dout), Grad: make([]float32, a.din*a.dout)}
	for i := range a.w.Data {
		a.w.Data[i] = float32(i%7-3) / 64
	}
}

func (a *affine) Params() []*parallel.Param { return []*parallel.Param{a.w} }

func (a *affine) Forward(_ context.Context, mb int, in []float32) ([]float32, error) {
	if mb == 0 {
		a.steps++
		if a.steps == a.stuckAt {
			fmt.Println("stuck in forward")
			select {} // until killed
		}
	}
	for len(a.outs) <= mb {
		a.outs, a.ins = append(a.outs, nil), append(a.ins, nil)
	}
	rows := len(in) / a.din
	if len(a.outs[mb]) != rows*a.dout {
		a.outs[mb] = make([]float32, rows*a.dout)
	}
	out := a.outs[mb]
	for n := range rows {
		for o := range a.dout {
			var acc float32
			for k := range a.din {
				acc += a.w.Data[o*a.din+k] * in[n*a.din+k]
			}
			out[n*a.dout+o] = acc
		}
	}
	a.ins[mb] = in
	return out, nil
}

func (a *affine) Backward(_ context.Context, mb int, dOut, dIn []float32) error {
	in := a.ins[mb]
	rows := len(in) / a.din
	for n := range rows {
		for o := range a.dout {
			g := dOut[n*a.dout+o]
			for k := range a.din {
				a.w.Grad[o*a.din+k] += g * in[n*a.din+k]
			}
		}
		if dIn != nil {
			for k := range a.din {
				var acc float32
				for o := range a.dout {
					acc += dOut[n*a.dout+o] * a.w.Data[o*a.din+k]
				}
				dIn[n*a.din+k] = acc
			}
		}
	}
	return nil
}

func (a *affine) Loss(_ context.Context, _ int, out, targets, dOut []float32) (float64, error) {
	var loss float64
	for i := range out {
		d := out[i] - targets[i]
		loss += float64(d * d / 2)
		dOut[i] = d
	}
	return loss, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
