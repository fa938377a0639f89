package collective_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/kernel"
)

// gradient is a realistic float32 gradient: normal(0, 1e-3), with a fraction
// zero of exact zeros (at the same positions on every rank, as in an
// embedding's untouched rows).
func gradient(rank, count int, zero float64) []float32 {
	rng := rand.New(rand.NewPCG(uint64(rank), 11))
	mask := rand.New(rand.NewPCG(5, 5))
	v := make([]float32, count)
	for i := range v {
		x := float32(rng.NormFloat64() * 1e-3)
		if mask.Float64() < zero {
			x = 0
		}
		v[i] = x
	}
	return v
}

// TestLosslessCompressionIsBitwiseUncompressed: with s2 and zstd, AllReduce
// gives the very bits of the uncompressed ring, for 1..8 ranks, odd counts,
// every op, integer and float types.
func TestLosslessCompressionIsBitwiseUncompressed(t *testing.T) {
	for _, comp := range []string{"s2", "zstd"} {
		for n := 1; n <= 8; n++ {
			t.Run(fmt.Sprintf("%s/n=%d", comp, n), func(t *testing.T) {
				cfg := tinyPipeline
				if n%2 == 0 {
					cfg = collective.Config{SegmentBytes: 4096, MinSegmentBytes: 512}
				}
				cfg.Algorithm = "ring" // compression applies to the ring algorithms
				plain := local(t, n, cfg)
				cfg.Compression = comp
				packed := local(t, n, cfg)
				losslessCase[float32](t, plain, packed, collective.Sum)
				losslessCase[float32](t, plain, packed, collective.Avg)
				losslessCase[float64](t, plain, packed, collective.Max)
				losslessCase[int32](t, plain, packed, collective.Prod)
				losslessCase[uint8](t, plain, packed, collective.Sum)
			})
		}
	}
}

func losslessCase[T collective.Elem](t *testing.T, plain, packed []*collective.Comm, op collective.Op) {
	t.Helper()
	n := len(plain)
	for _, count := range append(oddCounts(n), 10_007) {
		want := make([][]T, n)
		got := make([][]T, n)
		for r := range n {
			want[r] = inputs[T](r, count, op)
			if kernel.IsFloat[T]() && op != collective.Prod {
				for i, g := range gradient(r, count, 0.5) {
					want[r][i] = T(g)
				}
			}
			got[r] = append([]T(nil), want[r]...)
		}
		requireAllOK(t, each(plain, func(r int, c *collective.Comm) error { return collective.AllReduce(ctx, c, want[r], op) }))
		requireAllOK(t, each(packed, func(r int, c *collective.Comm) error { return collective.AllReduce(ctx, c, got[r], op) }))
		for r := range n {
			require.Equal(t, kernel.Bytes(want[r]), kernel.Bytes(got[r]), "%v %v count=%d rank %d", kernel.TypeOf[T](), op, count, r)
		}
	}
}

// TestLossyCompressionIsCloseAndIdentical: with bf16 and fp16 every rank
// ends with the same bits, within the codec's rounding of the exact sum.
func TestLossyCompressionIsCloseAndIdentical(t *testing.T) {
	for _, comp := range []string{"bf16", "fp16"} {
		for n := 1; n <= 8; n++ {
			t.Run(fmt.Sprintf("%s/n=%d", comp, n), func(t *testing.T) {
				cfg := tinyPipeline
				if n%2 == 0 {
					cfg = collective.Config{SegmentBytes: 4096, MinSegmentBytes: 512}
				}
				cfg.Algorithm, cfg.Compression = "ring", comp
				comms := local(t, n, cfg)
				for _, op := range []collective.Op{collective.Sum, collective.Avg} {
					for _, count := range append(oddCounts(n), 10_007) {
						bufs := make([][]float32, n)
						exact := make([]float64, count)
						scale := make([]float64, count)
						for r := range n {
							bufs[r] = gradient(r, count, 0)
							for i, v := range bufs[r] {
								exact[i] += float64(v)
								scale[i] += math.Abs(float64(v))
							}
						}
						requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
							return collective.AllReduce(ctx, c, bufs[r], op)
						}))
						requireIdentical(t, bufs)
						if n == 1 {
							require.Equal(t, gradient(0, count, 0), bufs[0], "one rank: nothing is encoded")
							continue
						}
						div := 1.0
						if op == collective.Avg {
							div = float64(n)
						}
						for i, v := range bufs[0] {
							require.InDelta(t, exact[i]/div, float64(v), lossyBound(comp, n, scale[i]/div), "%v count=%d i=%d", op, count, i)
						}
					}
				}
			})
		}
	}
}

// lossyBound is the documented error bound of a lossy AllReduce on n ranks
// of values whose magnitudes add up to scale: n roundings (the inputs, n-2
// forwarded partial sums, the final value), each off by at most half an ulp
// of a value no larger than scale (2^-8 relative for bf16, 2^-11 for fp16,
// or half fp16's smallest subnormal, 2^-25), plus float32 accumulation.
func lossyBound(comp string, n int, scale float64) float64 {
	eps, tiny := 0x1p-8, 0.0
	if comp == "fp16" {
		eps, tiny = 0x1p-11, 0x1p-25
	}
	return float64(n) * ((eps+0x1p-24)*scale + tiny)
}

// TestLossyCompressionLeavesOtherCallsExact: an int64 counter, a float64
// sum, a float32 Max go uncompressed under bf16 (as DDP's hooks touch only
// gradient buckets), and so do small calls by recursive doubling.
func TestLossyCompressionLeavesOtherCallsExact(t *testing.T) {
	const n = 3
	comms := local(t, n, collective.Config{Compression: "bf16", SegmentBytes: 4096, MinSegmentBytes: 512})
	count := 300_000 // large enough for the ring
	check := func(name string, fn func(r int, c *collective.Comm) error, verify func(r int)) {
		t.Helper()
		t.Log(name)
		requireAllOK(t, each(comms, fn))
		for r := range n {
			verify(r)
		}
	}
	i64 := make([][]int64, n)
	f64 := make([][]float64, n)
	f32 := make([][]float32, n)
	check("int64", func(r int, c *collective.Comm) error {
		i64[r] = inputs[int64](r, count, collective.Sum)
		return collective.AllReduce(ctx, c, i64[r], collective.Sum)
	}, func(r int) {
		for i := range count {
			require.Equal(t, reference[int64](n, i, collective.Sum), i64[r][i])
		}
	})
	check("float64", func(r int, c *collective.Comm) error {
		f64[r] = inputs[float64](r, count, collective.Sum)
		return collective.AllReduce(ctx, c, f64[r], collective.Sum)
	}, func(r int) {
		for i := range count {
			require.Equal(t, reference[float64](n, i, collective.Sum), f64[r][i])
		}
	})
	check("float32 max", func(r int, c *collective.Comm) error {
		f32[r] = gradient(r, count, 0)
		return collective.AllReduce(ctx, c, f32[r], collective.Max)
	}, func(r int) {
		want := gradient(0, count, 0)
		for q := 1; q < n; q++ {
			for i, v := range gradient(q, count, 0) {
				want[i] = max(want[i], v)
			}
		}
		require.Equal(t, want, f32[r])
	})
	small := make([][]float32, n)
	check("small float32 sum", func(r int, c *collective.Comm) error {
		small[r] = gradient(r, 1000, 0)
		return collective.AllReduce(ctx, c, small[r], collective.Sum)
	}, func(r int) {
		// Recursive doubling adds in its own order: compare with the
		// uncompressed float32 sum to within float32 rounding, far below
		// bf16's.
		for i := range 1000 {
			var s, scale float64
			for q := range n {
				g := float64(gradient(q, 1000, 0)[i])
				s, scale = s+g, scale+math.Abs(g)
			}
			require.InDelta(t, s, float64(small[r][i]), scale*0x1p-22)
		}
	})
	_, ok := comms[0].CompressionStats()
	require.False(t, ok, "nothing was compressed")
}

// TestIncompressibleDataBacksOff: random floats are tried on few segments,
// and their results are still exact; the stats say so.
func TestIncompressibleDataBacksOff(t *testing.T) {
	const n = 2
	comms := local(t, n, collective.Config{Compression: "s2", Algorithm: "ring"})
	const count = 1 << 22 // 16 MiB: 32 of the lossless ring's 512 KiB pieces per rank
	bufs := make([][]uint32, n)
	for r := range n {
		rng := rand.New(rand.NewPCG(uint64(r), 1))
		bufs[r] = make([]uint32, count)
		for i := range bufs[r] {
			bufs[r][i] = rng.Uint32()
		}
	}
	want := make([]uint32, count)
	for i := range want {
		want[i] = bufs[0][i] + bufs[1][i]
	}
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		return collective.AllReduce(ctx, c, bufs[r], collective.Sum)
	}))
	require.Equal(t, want, bufs[0])
	require.Equal(t, want, bufs[1])
	st, ok := comms[0].CompressionStats()
	require.True(t, ok)
	segs := st.Tried + st.Skipped
	require.Equal(t, 32, segs, "%+v", st)
	require.Zero(t, st.Compressed, "%+v", st)
	require.Equal(t, 5, st.Tried, "tries after 0, 1, 2, 4 and 8 skipped pieces: %+v", st)
	require.Equal(t, st.RawBytes, st.WireBytes)
}

// TestSparseGradientsShrink: gradients that are 90% zeros cross the wire in
// well under a third of their bytes.
func TestSparseGradientsShrink(t *testing.T) {
	for _, comp := range []string{"s2", "zstd"} {
		t.Run(comp, func(t *testing.T) {
			const n = 4
			comms := local(t, n, collective.Config{Compression: comp, Algorithm: "ring"})
			bufs := make([][]float32, n)
			for r := range n {
				bufs[r] = gradient(r, 1<<20, 0.9)
			}
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				return collective.AllReduce(ctx, c, bufs[r], collective.Sum)
			}))
			requireIdentical(t, bufs)
			st, ok := comms[1].CompressionStats()
			require.True(t, ok)
			require.Less(t, 3*st.WireBytes, st.RawBytes, "%+v", st)
		})
	}
}

// TestInvalidCompressionIsInvalid: an unknown codec name is refused when
// the communicator is formed, and RINGO_COMPRESSION when the environment is
// read.
func TestInvalidCompressionIsInvalid(t *testing.T) {
	_, err := collective.LocalConfig(2, collective.Config{Compression: "gzip"})
	require.ErrorIs(t, err, collective.ErrInvalid)
	_, err = collective.New(ctx, collective.Config{Size: 1, Compression: "gzip"})
	require.ErrorIs(t, err, collective.ErrInvalid)
	t.Setenv("RINGO_RANK", "0")
	t.Setenv("RINGO_WORLD_SIZE", "1")
	t.Setenv("RINGO_COMPRESSION", "lz4")
	_, err = collective.ConfigFromEnv()
	require.ErrorIs(t, err, collective.ErrInvalid)
}
