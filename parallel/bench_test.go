package parallel_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
)

// BenchmarkSync is one step of 4 MiB of gradients over Local
// communicators: every parameter marked ready in backward order, then Sync.
// The model has 1, 10 or 100 parameters of the same total size, so the
// differences are what bucketing costs per parameter (Ready, views,
// bookkeeping); "allreduce" is the floor: one plain AllReduce(Avg) of the
// same 4 MiB, no DataParallel. With 1 rank nothing is communicated: what
// is left is DataParallel's own cost per step.
func BenchmarkSync(b *testing.B) {
	const total = 1 << 20 // float32s: 4 MiB
	for _, n := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("ranks=%d/allreduce", n), func(b *testing.B) {
			comms := local(b, n)
			bufs := make([][]float32, n)
			for r := range bufs {
				bufs[r] = make([]float32, total)
			}
			runSteps(b, n, func(r int) error { return collective.AllReduce(ctx, comms[r], bufs[r], collective.Avg) })
		})
		for _, count := range []int{1, 10, 100} {
			b.Run(fmt.Sprintf("ranks=%d/params=%d", n, count), func(b *testing.B) {
				comms := local(b, n)
				lists := make([][]*parallel.Param, n)
				for r := range n {
					for i := range count {
						size := total / count
						if i == count-1 {
							size = total - (count-1)*(total/count)
						}
						lists[r] = append(lists[r], &parallel.Param{Name: fmt.Sprint("p", i), Data: make([]float32, size)})
					}
				}
				dps := newDP(b, comms, lists, parallel.DataParallelOptions{})
				runSteps(b, n, func(r int) error {
					ps := lists[r]
					for i := len(ps) - 1; i >= 0; i-- {
						dps[r].Ready(ps[i])
					}
					return dps[r].Sync(ctx)
				})
				b.ReportMetric(float64(len(dps[0].Buckets())), "buckets")
			})
		}
	}
}

func runSteps(b *testing.B, n int, step func(rank int) error) {
	d := testjob.NewDriver(b, n, step)
	require.NoError(b, d.Run())
	b.SetBytes(4 << 20)
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Run(); err != nil {
			b.Fatal(err)
		}
	}
}
