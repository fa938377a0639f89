package collective_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// asyncDriver drives one …Async call on every rank, waited for at once:
// call issues it.
func asyncDriver(t testing.TB, comms []*collective.Comm, call func(r int, c *collective.Comm) *collective.Work) *driver {
	return newDriver(t, comms, func(r int, c *collective.Comm) error { return call(r, c).Wait() })
}

// An …Async call allocates its Work and nothing else: no goroutine, closure,
// context or channel per call once the communicator has run one (Done, not
// called here, makes its channel when asked). Collective and point-to-point
// calls, issued several at a time as a training step would.
func TestAsyncCallAllocatesOnlyItsWork(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	const n, inFlight = 3, 4
	for _, count := range []int{1, 4096} {
		t.Run(fmt.Sprint(count), func(t *testing.T) {
			comms := local(t, n, collective.Config{})
			bufs := make([][][]float32, n)
			recvs := make([][]float32, n)
			for r := range bufs {
				for range inFlight {
					bufs[r] = append(bufs[r], make([]float32, count))
				}
				recvs[r] = make([]float32, count)
			}
			works := make([][]*collective.Work, n)
			d := newDriver(t, comms, func(r int, c *collective.Comm) error {
				ws := works[r][:0]
				for _, b := range bufs[r] {
					ws = append(ws, collective.AllReduceAsync(ctx, c, b, collective.Sum))
				}
				ws = append(ws,
					collective.BroadcastAsync(ctx, c, bufs[r][0], 1),
					collective.SendAsync(ctx, c, bufs[r][1], (r+1)%n, 7),
					collective.RecvAsync(ctx, c, recvs[r], (r+n-1)%n, 7))
				works[r] = ws
				for _, w := range ws {
					if err := w.Wait(); err != nil {
						return err
					}
				}
				return nil
			})
			allocs := d.AllocsPerStep(t)
			calls := float64(n * (inFlight + 3))
			t.Logf("%.2f allocations per call (%v per step of %v calls on %d ranks)", allocs/calls, allocs, calls, n)
			require.LessOrEqual(t, allocs, calls, "allocations per step of %v async calls", calls)
		})
	}
}

// BenchmarkAllReduceAsync is BenchmarkAllReduce's mem case through
// AllReduceAsync and Wait: what the Work and its goroutine cost.
//
//	go test -run='^$' -bench=AllReduceAsync -benchmem ./collective/
func BenchmarkAllReduceAsync(b *testing.B) {
	for _, n := range []int{2, 4} {
		b.Run(fmt.Sprintf("mem/ranks=%d", n), func(b *testing.B) {
			comms := formComms(b, "mem", n, collective.Config{})
			for _, size := range benchSizes[:2] {
				b.Run(size.name, func(b *testing.B) {
					bufs := make([][]float32, n)
					for r := range bufs {
						bufs[r] = make([]float32, size.bytes/4)
					}
					d := asyncDriver(b, comms, func(r int, c *collective.Comm) *collective.Work {
						return collective.AllReduceAsync(ctx, c, bufs[r], collective.Sum)
					})
					require.NoError(b, d.run())
					b.SetBytes(int64(size.bytes))
					b.ReportAllocs()
					b.ResetTimer()
					for range b.N {
						if err := d.run(); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		})
	}
}
