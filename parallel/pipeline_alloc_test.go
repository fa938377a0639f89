package parallel

import (
	"context"
	"fmt"
	"testing"

	"github.com/ringo-ml/ringo/internal/testjob"
)

// newPipeDriver drives a Step of batch on every rank per Run.
func newPipeDriver(t testing.TB, pipes []*Pipeline, batch Batch) *testjob.Driver {
	return testjob.NewDriver(t, len(pipes), func(r int) error {
		_, err := pipes[r].Step(context.Background(), batch)
		return err
	})
}

// TestPipelineStepAllocatesNothing: once a step has run, a step of the same
// shape allocates nothing on any rank (the stages here allocate nothing
// either), over the in-process transport and over TCP.
func TestPipelineStepAllocatesNothing(t *testing.T) {
	if pipeRaceEnabled {
		t.Skip("the race detector allocates")
	}
	pipeNoLeaks(t)
	for _, transport := range []string{"mem", "tcp"} {
		for _, v := range pipeVariants {
			t.Run(fmt.Sprintf("%s/%v/v=%d", transport, v.schedule, v.chunks), func(t *testing.T) {
				const p, m = 3, 4
				form := pipeLocal
				if transport == "tcp" {
					form = pipeTCP
				}
				comms := form(t, p)
				model := pipeModel{seed: 9}
				for s := 0; s <= p*v.chunks; s++ {
					model.widths = append(model.widths, 3+s%3)
				}
				pipes, _ := newPipelines(t, comms, model, PipelineOptions{Schedule: v.schedule, Microbatches: m})
				newPipeDriver(t, pipes, model.batch(0, 4*m+1)).RequireNoAllocs(t, "step")
			})
		}
	}
}
