package parallel_test

import (
	"context"
	"fmt"
	"sync"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/parallel"
)

// Two ranks (goroutines here; processes on many hosts with collective.Init)
// train a one-weight model y = w·x on their halves of each global batch.
// After every Sync, both hold the gradient of the whole batch, so both
// take the same step.
func Example() {
	ctx := context.Background()
	comms, err := collective.Local(2)
	if err != nil {
		panic(err)
	}
	final := make([]float32, 2)
	var wg sync.WaitGroup
	for rank, comm := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer comm.Close()
			w := &parallel.Param{Name: "w", Data: []float32{float32(10 * rank)}} // rank 0's value wins
			dp, err := parallel.NewDataParallel(ctx, comm, []*parallel.Param{w}, parallel.DataParallelOptions{})
			if err != nil {
				panic(err)
			}
			defer dp.Close()
			xs := [][]float32{{1, 2}, {3, 4}} // rank r's samples; targets are y = 2x
			for range 50 {
				var g float32 // d/dw of the mean of (w·x - 2x)² / 2 over this rank's samples
				for _, x := range xs[rank] {
					g += (w.Data[0]*x - 2*x) * x
				}
				w.Grad[0] = g / float32(len(xs[rank]))
				dp.Ready(w) // optional: lets the reduction start during backward
				if err := dp.Sync(ctx); err != nil {
					panic(err)
				}
				w.Data[0] -= 0.1 * w.Grad[0] // the averaged gradient: the same step on both ranks
			}
			final[rank] = w.Data[0]
		}()
	}
	wg.Wait()
	fmt.Printf("rank 0: w = %.4f\nrank 1: w = %.4f\n", final[0], final[1])
	// Output:
	// rank 0: w = 2.0000
	// rank 1: w = 2.0000
}
