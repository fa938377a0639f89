package parallel_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"sync"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/parallel"
)

// The schedules are data: print one as a timeline to see its bubble.
func ExamplePipelineTrace_WriteTimeline() {
	plan, err := parallel.NewPipelinePlan(parallel.OneFOneB, 3, 1, 4)
	if err != nil {
		log.Fatal(err)
	}
	if err := plan.Check(); err != nil { // deadlock-free, forwards before backwards, ...
		log.Fatal(err)
	}
	trace, err := plan.Simulate(parallel.PipelineCosts{Forward: 1, Backward: 2})
	if err != nil {
		log.Fatal(err)
	}
	trace.WriteTimeline(os.Stdout)
	// Output:
	// 1f1b: 3 ranks × 1 stages, 4 micro-batches, forward 1, backward 2, transfer 0: makespan 18, bubble 33.3% (theory 33.3%)
	// rank 0 | 0F0 0F1 0F2 .   .   .   .   0B0     0F3 0B1     .   0B2     .   0B3     | idle 33.3%
	// rank 1 | .   1F0 1F1 .   .   1B0     1F2 1B1     1F3 1B2     .   1B3     .   .   | idle 33.3%
	// rank 2 | .   .   2F0 2B0     2F1 2B1     2F2 2B2     2F3 2B3     .   .   .   .   | idle 33.3%
}

// scaleStage is a model part that multiplies its input by one weight; the
// last stage's loss is ½·Σ(out − target)².
type scaleStage struct {
	w   parallel.Param
	ins map[int][]float32 // kept for Backward, by micro-batch
	out map[int][]float32
}

func newScaleStage(w float32) *scaleStage {
	return &scaleStage{w: parallel.Param{Name: "w", Data: []float32{w}, Grad: []float32{0}},
		ins: map[int][]float32{}, out: map[int][]float32{}}
}

func (s *scaleStage) Params() []*parallel.Param { return []*parallel.Param{&s.w} }

func (s *scaleStage) Forward(_ context.Context, mb int, in []float32) ([]float32, error) {
	out := make([]float32, len(in))
	for i, x := range in {
		out[i] = s.w.Data[0] * x
	}
	s.ins[mb], s.out[mb] = in, out
	return out, nil
}

func (s *scaleStage) Backward(_ context.Context, mb int, dOut, dIn []float32) error {
	for i, g := range dOut {
		s.w.Grad[0] += g * s.ins[mb][i]
		if dIn != nil {
			dIn[i] = g * s.w.Data[0]
		}
	}
	delete(s.ins, mb)
	delete(s.out, mb)
	return nil
}

func (s *scaleStage) Loss(_ context.Context, _ int, out, targets, dOut []float32) (float64, error) {
	var loss float64
	for i := range out {
		d := out[i] - targets[i]
		loss += float64(d*d) / 2
		dOut[i] = d
	}
	return loss, nil
}

// Two ranks, one stage each, train y = w₁·w₀·x by 1F1B over 4 micro-batches.
func ExampleNewPipeline() {
	ctx := context.Background()
	comms, err := collective.Local(2) // in a real job: collective.Init(ctx), one process per rank
	if err != nil {
		log.Fatal(err)
	}
	batch := parallel.Batch{
		Samples: 8,
		Inputs:  []float32{1, 2, 3, 4, 5, 6, 7, 8},        // read by the first stage's rank
		Targets: []float32{6, 12, 18, 24, 30, 36, 42, 48}, // read by the last stage's rank: y = 6x
	}
	var wg sync.WaitGroup
	results := make([]string, 2)
	for rank, comm := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer comm.Close()
			stage := newScaleStage(float32(rank + 1)) // w₀ = 1, w₁ = 2
			pipe, err := parallel.NewPipeline(ctx, comm, []parallel.Stage{stage},
				parallel.PipelineOptions{Schedule: parallel.OneFOneB, Microbatches: 4})
			if err != nil {
				log.Fatal(err)
			}
			defer pipe.Close()
			loss, err := pipe.Step(ctx, batch) // every rank gets the loss
			if err != nil {
				log.Fatal(err) // any rank's failure fails every rank's step
			}
			// The loss and the gradients are the means over the 4 micro-batches.
			results[rank] = fmt.Sprintf("rank %d: loss %g, dL/dw%d %g", rank, loss, rank, stage.w.Grad[0])
		}()
	}
	wg.Wait()
	for _, r := range results {
		fmt.Println(r)
	}
	// Output:
	// rank 0: loss 408, dL/dw0 -408
	// rank 1: loss 408, dL/dw1 -204
}
