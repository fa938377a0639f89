package collective_test

import (
	"fmt"
	"testing"

	"github.com/ringo-ml/ringo/collective"
)

// BenchmarkAllReduceLatency measures the latency of an 8-byte float32 Sum
// AllReduce on 8 ranks in one process, over the mem transport, TCP
// loopback and shared memory, for each algorithm forced: what the latency-optimal algorithms
// are for (issue #5 asks recursive doubling for at least 2x less than the
// ring). Rank 0 runs on the benchmark's goroutine, the others on their own.
//
//	flock /tmp/ringo-bench.lock go test -run='^$' -bench=AllReduceLatency -count=5 ./collective/
func BenchmarkAllReduceLatency(b *testing.B) {
	const ranks = 8
	for _, tr := range []string{"mem", "tcp", "shm"} {
		for _, algo := range []string{"ring", "doubling", "rabenseifner"} {
			b.Run(fmt.Sprintf("%s/ranks=%d/%s", tr, ranks, algo), func(b *testing.B) {
				comms := formComms(b, tr, ranks, collective.Config{Algorithm: algo})
				loop(b, comms, 2, 100)
			})
		}
		// The floor: a Barrier is log2(8) = 3 rounds of empty frames, the
		// rounds of recursive doubling without data or reduction.
		b.Run(fmt.Sprintf("%s/ranks=%d/barrier", tr, ranks), func(b *testing.B) {
			comms := formComms(b, tr, ranks, collective.Config{})
			barriers := func(c *collective.Comm, n int) error {
				for range n {
					if err := collective.Barrier(ctx, c); err != nil {
						return err
					}
				}
				return nil
			}
			requireAllOK(b, each(comms, func(r int, c *collective.Comm) error { return barriers(c, 100) }))
			b.ReportAllocs()
			b.ResetTimer()
			requireAllOK(b, each(comms, func(r int, c *collective.Comm) error { return barriers(c, b.N) }))
		})
	}
}

// loop runs b.N AllReduces of count float32s back to back on every rank
// (after warm calls), as a training loop would: ranks are not lined up
// between calls, so what is timed is the collective alone, without a
// per-call start signal (the driver's) whose wake-ups would blur the
// latencies compared.
func loop(b *testing.B, comms []*collective.Comm, count, warm int) {
	bufs := make([][]float32, len(comms))
	for r := range bufs {
		bufs[r] = make([]float32, count)
	}
	calls := func(c *collective.Comm, buf []float32, n int) error {
		for range n {
			if err := collective.AllReduce(ctx, c, buf, collective.Sum); err != nil {
				return err
			}
		}
		return nil
	}
	requireAllOK(b, each(comms, func(r int, c *collective.Comm) error { return calls(c, bufs[r], warm) }))
	b.SetBytes(int64(4 * count))
	b.ReportAllocs()
	b.ResetTimer()
	requireAllOK(b, each(comms, func(r int, c *collective.Comm) error { return calls(c, bufs[r], b.N) }))
}

// modelSizes are the sizes the cost model was fitted to and is checked at.
var modelSizes = []struct {
	name  string
	bytes int
}{
	{"8B", 8}, {"16KiB", 16 << 10}, {"256KiB", 256 << 10}, {"1MiB", 1 << 20}, {"16MiB", 16 << 20},
}

// BenchmarkAllReduceModel times float32 Sum AllReduce over TCP loopback for
// every algorithm, size and rank count the cost model (costmodel.go) is
// fitted to and compared with: its output is what TestFitCostModel reads.
//
//	flock /tmp/ringo-bench.lock go test -run='^$' -bench=AllReduceModel -count=3 ./collective/ | tee /tmp/model.txt
func BenchmarkAllReduceModel(b *testing.B) {
	for _, n := range []int{2, 3, 4} {
		for _, algo := range []string{"ring", "doubling", "rabenseifner", "bidir"} {
			b.Run(fmt.Sprintf("ranks=%d/%s", n, algo), func(b *testing.B) {
				comms := formComms(b, "tcp", n, collective.Config{Algorithm: algo})
				for _, size := range modelSizes {
					b.Run(size.name, func(b *testing.B) {
						loop(b, comms, size.bytes/4, 3)
					})
				}
			})
		}
	}
}

// BenchmarkBroadcastLatency compares the binomial tree ("doubling") with the
// ring's chain ("ring") for an 8-byte Broadcast from rank 0 on 8 ranks.
//
//	flock /tmp/ringo-bench.lock go test -run='^$' -bench=BroadcastLatency -count=5 ./collective/
func BenchmarkBroadcastLatency(b *testing.B) {
	for _, tr := range []string{"mem", "tcp", "shm"} {
		for _, ranks := range []int{4, 8} {
			for _, algo := range []string{"ring", "doubling"} {
				b.Run(fmt.Sprintf("%s/ranks=%d/%s", tr, ranks, algo), func(b *testing.B) {
					comms := formComms(b, tr, ranks, collective.Config{Algorithm: algo})
					bufs := make([][]float32, ranks)
					for r := range bufs {
						bufs[r] = make([]float32, 2)
					}
					calls := func(c *collective.Comm, buf []float32, n int) error {
						for range n {
							if err := collective.Broadcast(ctx, c, buf, 0); err != nil {
								return err
							}
						}
						return nil
					}
					requireAllOK(b, each(comms, func(r int, c *collective.Comm) error { return calls(c, bufs[r], 100) }))
					b.ReportAllocs()
					b.ResetTimer()
					requireAllOK(b, each(comms, func(r int, c *collective.Comm) error { return calls(c, bufs[r], b.N) }))
				})
			}
		}
	}
}
