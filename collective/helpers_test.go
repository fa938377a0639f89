package collective_test

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/internal/testjob"
)

// testTimeout bounds every call in these tests: a hang fails the test instead
// of stalling it.
const testTimeout = 30 * time.Second

// tinyPipeline cuts even small vectors into many pieces and rounds, so that
// the pipelining paths run on the sizes tests can afford.
var tinyPipeline = collective.Config{SegmentBytes: 64, MinSegmentBytes: 8, PipelineDepth: 3, Timeout: testTimeout}

func local(t testing.TB, n int, cfg collective.Config) []*collective.Comm {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = testTimeout
	}
	comms, err := collective.LocalConfig(n, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { closeAll(comms) })
	return comms
}

func closeAll(comms []*collective.Comm) {
	var wg sync.WaitGroup
	for _, c := range comms {
		if c != nil {
			wg.Add(1)
			go func() { defer wg.Done(); _ = c.Close() }()
		}
	}
	wg.Wait()
}

// each runs fn on every rank concurrently and returns each rank's error.
func each(comms []*collective.Comm, fn func(rank int, c *collective.Comm) error) []error {
	return testjob.Each(len(comms), func(r int) error { return fn(r, comms[r]) })
}

func requireAllOK(t testing.TB, errs []error) {
	t.Helper()
	for r, err := range errs {
		require.NoError(t, err, "rank %d", r)
	}
}

var ctx = context.Background()

// input is rank's deterministic input: small integers (so that float sums are
// exact and comparable with a float64 reference), or for Prod values whose
// products are exact (powers of two and signs).
func input[T collective.Elem](rank, i int, op collective.Op) T {
	signed := T(0)-1 < 0
	if op == collective.Prod {
		vals := []float64{1, 2, 1, 3}
		if kernel.IsFloat[T]() {
			vals = []float64{1, 2, 0.5, -1}
		} else if signed {
			vals = []float64{1, 2, -1, 3}
		}
		return T(vals[(rank*3+i*7)%len(vals)])
	}
	v := (rank*31 + i*17 + rank*i) % 13
	if signed {
		return T(v - 6)
	}
	return T(v)
}

// reference computes the reduction of every rank's input at position i in
// float64 for floats (exact for these inputs) and in T's own arithmetic for
// integers (whose wrap-around is the specified result).
func reference[T collective.Elem](n, i int, op collective.Op) T {
	if kernel.IsFloat[T]() {
		acc := float64(input[T](0, i, op))
		for r := 1; r < n; r++ {
			x := float64(input[T](r, i, op))
			switch op {
			case collective.Sum, collective.Avg:
				acc += x
			case collective.Prod:
				acc *= x
			case collective.Min:
				acc = math.Min(acc, x)
			case collective.Max:
				acc = math.Max(acc, x)
			}
		}
		if op == collective.Avg {
			acc /= float64(n)
		}
		return T(acc)
	}
	acc := input[T](0, i, op)
	for r := 1; r < n; r++ {
		x := input[T](r, i, op)
		switch op {
		case collective.Sum:
			acc += x
		case collective.Prod:
			acc *= x
		case collective.Min:
			acc = min(acc, x)
		case collective.Max:
			acc = max(acc, x)
		}
	}
	return acc
}

func inputs[T collective.Elem](rank, count int, op collective.Op) []T {
	buf := make([]T, count)
	for i := range buf {
		buf[i] = input[T](rank, i, op)
	}
	return buf
}

// oddCounts are the vector lengths every collective must get right for n ranks.
func oddCounts(n int) []int {
	seen := map[int]bool{}
	var out []int
	for _, c := range []int{0, 1, 2, n - 1, n, n + 1, 7, 13, 31, 97, 256, 1009, 4099} {
		if c >= 0 && !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out
}

func opsFor[T collective.Elem]() []collective.Op {
	ops := []collective.Op{collective.Sum, collective.Prod, collective.Min, collective.Max}
	if kernel.IsFloat[T]() {
		ops = append(ops, collective.Avg)
	}
	return ops
}

// requireIdentical checks every rank ended with the same bits.
func requireIdentical[T collective.Elem](t testing.TB, results [][]T) {
	t.Helper()
	for r := 1; r < len(results); r++ {
		require.Equal(t, kernel.Bytes(results[0]), kernel.Bytes(results[r]), "rank %d differs from rank 0", r)
	}
}
