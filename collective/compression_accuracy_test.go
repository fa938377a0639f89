package collective_test

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// TestLossyAccuracy measures what bf16 and fp16 on the wire cost in accuracy
// on realistic gradients (normal(0, 1e-3), 2^20 values per rank), against
// the uncompressed float32 AllReduce and against the exact (float64) sum,
// and holds them to the figures docs/compression.md reports. go test -v
// prints the table:
//
//	go test ./collective -run TestLossyAccuracy -v
func TestLossyAccuracy(t *testing.T) {
	count := 1 << 20
	if testing.Short() {
		count = 1 << 14
	}
	t.Logf("%-5s %5s %14s %14s %14s %14s", "codec", "ranks", "rel-L2-vs-fp32", "rel-L2-exact", "median-rel", "p99-rel")
	for _, comp := range []string{"none", "bf16", "fp16"} {
		for n := 2; n <= 8; n++ {
			m := lossyError(t, comp, n, count)
			t.Logf("%-5s %5d %14.3g %14.3g %14.3g %14.3g", comp, n, m.vsFP32, m.vsExact, m.median, m.p99)
			// Bounds: a little above what was measured (docs/compression.md),
			// so that a change to the rounding or the schedule shows.
			limit := map[string]float64{"none": 1e-6, "bf16": 4e-3, "fp16": 5e-4}[comp]
			require.Less(t, m.vsExact, limit, "%s on %d ranks", comp, n)
		}
	}
}

type accuracy struct {
	vsFP32, vsExact float64 // ||got - ref|| / ||ref||
	median, p99     float64 // elementwise |got - exact| / |exact|
}

func lossyError(t *testing.T, comp string, n, count int) accuracy {
	t.Helper()
	cfg := collective.Config{Algorithm: "ring", Compression: comp}
	comms := local(t, n, cfg)
	plain := local(t, n, collective.Config{Algorithm: "ring"})
	got := make([][]float32, n)
	ref := make([][]float32, n)
	exact := make([]float64, count)
	for r := range n {
		got[r] = gradient(r, count, 0)
		ref[r] = slices.Clone(got[r])
		for i, v := range got[r] {
			exact[i] += float64(v)
		}
	}
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		return collective.AllReduce(ctx, c, got[r], collective.Sum)
	}))
	requireAllOK(t, each(plain, func(r int, c *collective.Comm) error {
		return collective.AllReduce(ctx, c, ref[r], collective.Sum)
	}))
	requireIdentical(t, got)
	var d32, n32, dx, nx float64
	rel := make([]float64, 0, count)
	for i, v := range got[0] {
		g, f, x := float64(v), float64(ref[0][i]), exact[i]
		d32 += (g - f) * (g - f)
		n32 += f * f
		dx += (g - x) * (g - x)
		nx += x * x
		if x != 0 {
			rel = append(rel, math.Abs(g-x)/math.Abs(x))
		}
	}
	slices.Sort(rel)
	return accuracy{
		vsFP32:  math.Sqrt(d32 / n32),
		vsExact: math.Sqrt(dx / nx),
		median:  rel[len(rel)/2],
		p99:     rel[len(rel)*99/100],
	}
}

// ExampleConfig_compression shows gradient compression in a data-parallel
// step: bf16 on the wire, float32 sums.
func ExampleConfig_compression() {
	comms, _ := collective.LocalConfig(2, collective.Config{Compression: "bf16"})
	defer func() {
		for _, c := range comms {
			c.Close()
		}
	}()
	grads := [][]float32{make([]float32, 1<<20), make([]float32, 1<<20)}
	for r := range grads {
		grads[r][0] = 1 + float32(r)/1000 // 1.000 and 1.001
	}
	done := make(chan error, 2)
	for r, c := range comms {
		go func() { done <- collective.AllReduce(ctx, c, grads[r], collective.Avg) }()
	}
	_, _ = <-done, <-done
	fmt.Println(grads[0][0], grads[1][0]) // bf16 keeps 8 significant bits
	// Output: 1 1
}
