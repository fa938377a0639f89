package parallel

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkPipelineStep is the cost of the pipeline's own machinery: tiny
// stages, so that a step is its messages, waits and bookkeeping.
//
//	go test -run ^$ -bench PipelineStep -benchmem ./parallel
func BenchmarkPipelineStep(b *testing.B) {
	for _, transport := range []string{"mem", "tcp"} {
		for _, v := range pipeVariants {
			b.Run(fmt.Sprintf("%s/%v/v=%d/P=4/M=8", transport, v.schedule, v.chunks), func(b *testing.B) {
				const p, m = 4, 8
				form := pipeLocal
				if transport == "tcp" {
					form = pipeTCP
				}
				model := pipeModel{seed: 1}
				for s := 0; s <= p*v.chunks; s++ {
					model.widths = append(model.widths, 16)
				}
				pipes, _ := newPipelines(b, form(b, p), model, PipelineOptions{Schedule: v.schedule, Microbatches: m})
				d := newPipeDriver(b, pipes, model.batch(0, 4*m))
				for range 3 { // links made, buffers grown
					if err := d.Run(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportAllocs()
				for b.Loop() {
					if err := d.Run(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/float64(m), "µs/micro-batch")
			})
		}
	}
}

// BenchmarkPipelineBubble measures each rank's idle fraction with
// compute-bound stages — a forward waits 2 ms (the CPU stays free, so 4
// stages measure 4 machines on any machine) and a backward 4 ms — against
// the textbook figure. bench/pipebench does the same with more knobs, and
// with stages that spin a core.
//
//	go test -run ^$ -bench PipelineBubble ./parallel
func BenchmarkPipelineBubble(b *testing.B) {
	for _, v := range []struct {
		schedule PipelineSchedule
		chunks   int
	}{{GPipe, 1}, {OneFOneB, 1}, {Interleaved1F1B, 2}} {
		for _, p := range []int{2, 4} {
			for _, m := range []int{8, 16} {
				b.Run(fmt.Sprintf("%v/P=%d/M=%d/v=%d", v.schedule, p, m, v.chunks), func(b *testing.B) {
					model := pipeModel{seed: 1}
					for s := 0; s <= p*v.chunks; s++ {
						model.widths = append(model.widths, 8)
					}
					pipes, copies := newPipelines(b, pipeLocal(b, p), model, PipelineOptions{Schedule: v.schedule, Microbatches: m})
					for _, c := range copies {
						for _, st := range c {
							st.delay = 2 * time.Millisecond / time.Duration(v.chunks)
						}
					}
					d := newPipeDriver(b, pipes, model.batch(0, 2*m))
					var busy, wall time.Duration
					for b.Loop() {
						if err := d.Run(); err != nil {
							b.Fatal(err)
						}
						for _, pp := range pipes {
							busy += pp.Stats().Busy
							wall += pp.Stats().StepTime
						}
					}
					b.ReportMetric(100*(1-float64(busy)/float64(wall)), "bubble-%")
					b.ReportMetric(100*TheoreticalBubble(v.schedule, p, v.chunks, m), "theory-%")
				})
			}
		}
	}
}
