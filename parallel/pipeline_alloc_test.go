package parallel

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// pipeDriver runs one step on every rank: rank 0 on the calling goroutine,
// the others on goroutines that wait for a signal, so that a run allocates
// nothing of its own.
type pipeDriver struct {
	pipes []*Pipeline
	batch Batch
	start []chan struct{}
	done  chan error
}

func newPipeDriver(t testing.TB, pipes []*Pipeline, batch Batch) *pipeDriver {
	d := &pipeDriver{pipes: pipes, batch: batch, start: make([]chan struct{}, len(pipes)), done: make(chan error, len(pipes))}
	stop := make(chan struct{})
	for r := range pipes {
		d.start[r] = make(chan struct{})
		if r == 0 {
			continue
		}
		go func() {
			for {
				select {
				case <-d.start[r]:
					_, err := pipes[r].Step(context.Background(), d.batch)
					d.done <- err
				case <-stop:
					return
				}
			}
		}()
	}
	t.Cleanup(func() { close(stop) })
	return d
}

func (d *pipeDriver) run() error {
	for r := 1; r < len(d.pipes); r++ {
		d.start[r] <- struct{}{}
	}
	_, err := d.pipes[0].Step(context.Background(), d.batch)
	for r := 1; r < len(d.pipes); r++ {
		if e := <-d.done; err == nil {
			err = e
		}
	}
	return err
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
				d := newPipeDriver(t, pipes, model.batch(0, 4*m+1))
				for range 3 {
					require.NoError(t, d.run())
				}
				var err error
				allocs := testing.AllocsPerRun(10, func() {
					if e := d.run(); e != nil {
						err = e
					}
				})
				require.NoError(t, err)
				require.Zero(t, allocs, "allocations per step, all ranks together")
			})
		}
	}
}
