package collective_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
)

// driver runs one call on every rank, rank 0 on the calling goroutine and
// the others on goroutines that wait for a signal, so that one call of run
// is one collective and allocates nothing of its own.
type driver struct{ *testjob.Driver }

func newDriver(t testing.TB, comms []*collective.Comm, call func(rank int, c *collective.Comm) error) *driver {
	return &driver{testjob.NewDriver(t, len(comms), func(r int) error { return call(r, comms[r]) })}
}

// allReduceDriver drives a float32 Sum AllReduce of count elements.
func allReduceDriver(t testing.TB, comms []*collective.Comm, count int) *driver {
	bufs := make([][]float32, len(comms))
	for r := range bufs {
		bufs[r] = make([]float32, count)
	}
	return newDriver(t, comms, func(r int, c *collective.Comm) error {
		return collective.AllReduce(ctx, c, bufs[r], collective.Sum)
	})
}

func (d *driver) run() error { return d.Run() }

// requireNoAllocs runs d a few times (scratch buffers, iovecs and links are
// made then), then checks that a run allocates nothing, across all ranks.
func requireNoAllocs(t *testing.T, d *driver, what string) {
	t.Helper()
	d.RequireNoAllocs(t, what)
}

func TestAllReduceSteadyStateAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, tr := range []string{"mem", "tcp", "shm", "mixed"} {
		for _, count := range []int{1, 16 << 10, 1 << 20} {
			t.Run(fmt.Sprintf("%s/%d", tr, count), func(t *testing.T) {
				requireNoAllocs(t, allReduceDriver(t, formComms(t, tr, 3, collective.Config{}), count), "AllReduce")
			})
		}
	}
}

// BenchmarkAllReduceAvg is BenchmarkAllReduce's mem case with Avg, whose
// division by the rank count ends the call: what the division kernel costs
// next to the rest (issue: Avg's scalar division took 31% of a 4-rank
// 4 MiB profile).
//
//	go test -run='^$' -bench=AllReduceAvg ./collective/
func BenchmarkAllReduceAvg(b *testing.B) {
	for _, n := range []int{2, 4} {
		b.Run(fmt.Sprintf("mem/ranks=%d", n), func(b *testing.B) {
			comms := formComms(b, "mem", n, collective.Config{})
			for _, size := range []int{64 << 10, 4 << 20} {
				b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
					bufs := make([][]float32, n)
					for r := range bufs {
						bufs[r] = make([]float32, size/4)
						for i := range bufs[r] {
							bufs[r][i] = float32(i%1000) + 0.5
						}
					}
					d := newDriver(b, comms, func(r int, c *collective.Comm) error {
						return collective.AllReduce(ctx, c, bufs[r], collective.Avg)
					})
					require.NoError(b, d.run())
					b.SetBytes(int64(size))
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

// formComms forms n ranks over transport: "mem" (Local), "tcp", "shm"
// (shared memory), or "mixed" (two hosts, see formTwoHosts).
func formComms(t testing.TB, transport string, n int, cfg collective.Config) []*collective.Comm {
	switch transport {
	case "tcp":
		return formTCP(t, n, cfg)
	case "shm":
		return formShm(t, n, cfg)
	case "mixed":
		return formTwoHosts(t, n, cfg)
	}
	return local(t, n, cfg)
}

var benchSizes = []struct {
	name  string
	bytes int
}{
	{"4B", 4}, {"64KiB", 64 << 10}, {"1MiB", 1 << 20}, {"16MiB", 16 << 20}, {"64MiB", 64 << 20},
}

// BenchmarkAllReduce measures float32 Sum AllReduce in one process, ranks on
// goroutines, over the mem transport, TCP loopback and shared memory. MB/s
// is the per-rank buffer size over time (algbw); busbw-GB/s follows
// nccl-tests: algbw·2(n-1)/n.
//
//	go test -run='^$' -bench=AllReduce -benchmem ./collective/
func BenchmarkAllReduce(b *testing.B) {
	for _, tr := range []string{"mem", "tcp", "shm"} {
		for _, n := range []int{2, 4} {
			b.Run(fmt.Sprintf("%s/ranks=%d", tr, n), func(b *testing.B) {
				comms := formComms(b, tr, n, collective.Config{})
				for _, size := range benchSizes {
					b.Run(size.name, func(b *testing.B) {
						d := allReduceDriver(b, comms, size.bytes/4)
						require.NoError(b, d.run())
						b.SetBytes(int64(size.bytes))
						b.ReportAllocs()
						b.ResetTimer()
						for range b.N {
							if err := d.run(); err != nil {
								b.Fatal(err)
							}
						}
						algbw := float64(size.bytes) * float64(b.N) / b.Elapsed().Seconds()
						b.ReportMetric(algbw*2*float64(n-1)/float64(n)/1e9, "busbw-GB/s")
					})
				}
			})
		}
	}
}
