package ring

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/codec"
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/link"
)

// compressedRings gives every rank of tr a compressed twin of its ring with
// codec k, cutting lossless pieces as the plain ring does (small, for tests).
func compressedRings(t testing.TB, tr *testRing, k codec.Kind) []*Compressed {
	cs := make([]*Compressed, len(tr.ranks))
	for r, rk := range tr.ranks {
		c, err := newCompressed(rk.fwd, k, 0)
		require.NoError(t, err)
		t.Cleanup(c.Close)
		cs[r] = c
	}
	return cs
}

func codecSum[T link.Elem]() link.Reducer[T] { return Sum[T]() }

// codecPattern fills v for rank: "sparse" is 90% zeros (the same positions on
// every rank), "random" random values, "mixed" alternating runs of both.
func codecPattern[T link.Elem](v []T, rank int, kind string) {
	rng := rand.New(rand.NewPCG(uint64(rank), 7))
	mask := rand.New(rand.NewPCG(99, 1)) // the same on every rank
	for i := range v {
		x := T(rng.IntN(100)) - T(50)
		if kernel.IsFloat[T]() {
			x = T(rng.NormFloat64() * 1e-3)
		}
		switch kind {
		case "sparse":
			if mask.IntN(10) != 0 {
				x = 0
			}
		case "mixed":
			if (i/4096)%2 == 0 {
				x = T(i % 3)
			}
		}
		v[i] = x
	}
}

var codecCounts = []int{0, 1, 2, 3, 5, 7, 8, 13, 97, 1000, 4099, 65_537}

// TestCompressedLosslessBitwise: with S2 and zstd every rank ends with the
// exact bits the uncompressed ring computes, for every count and world size.
func TestCompressedLosslessBitwise(t *testing.T) {
	opts := []Options{{SegmentBytes: 256, MinSegmentBytes: 64, Depth: 3}, {SegmentBytes: 4096, MinSegmentBytes: 1024, Depth: 16}}
	for _, k := range []codec.Kind{codec.S2, codec.Zstd} {
		for _, opt := range opts {
			for _, n := range []int{1, 2, 3, 4, 5, 8} {
				t.Run(fmt.Sprintf("%v/seg=%d/n=%d", k, opt.SegmentBytes, n), func(t *testing.T) {
					tr := newTestRing(t, n, opt, nil)
					cs := compressedRings(t, tr, k)
					for _, count := range codecCounts {
						for _, pat := range []string{"sparse", "random", "mixed"} {
							checkLossless[float32](t, tr, cs, count, pat)
							if count < 5000 {
								checkLossless[int64](t, tr, cs, count, pat)
								checkLossless[uint8](t, tr, cs, count, pat)
							}
						}
					}
				})
			}
		}
	}
}

func checkLossless[T link.Elem](t *testing.T, tr *testRing, cs []*Compressed, count int, pat string) {
	t.Helper()
	n := len(tr.ranks)
	want := make([][]T, n)
	got := make([][]T, n)
	for r := range n {
		want[r] = make([]T, count)
		codecPattern(want[r], r, pat)
		got[r] = append([]T(nil), want[r]...)
	}
	require.NoError(t, tr.do(t, func(r int) error { return AllReduce(tr.ranks[r].fwd, want[r], codecSum[T]()) }))
	require.NoError(t, tr.do(t, func(r int) error { return AllReduceCompressed(cs[r], got[r], codecSum[T]()) }))
	for r := range n {
		require.Equal(t, kernel.Bytes(want[r]), kernel.Bytes(got[r]), "%v count=%d %s rank %d", kernel.TypeOf[T](), count, pat, r)
	}
}

// TestCompressedLossy: bf16 and fp16 results are bitwise identical on every
// rank and within the codec's rounding of a float64 reference.
func TestCompressedLossy(t *testing.T) {
	for _, k := range []codec.Kind{codec.BF16, codec.FP16} {
		for _, n := range []int{1, 2, 3, 4, 6, 7, 8} {
			for _, avg := range []bool{false, true} {
				t.Run(fmt.Sprintf("%v/n=%d/avg=%v", k, n, avg), func(t *testing.T) {
					tr := newTestRing(t, n, Options{SegmentBytes: 512, MinSegmentBytes: 64, Depth: 4}, nil)
					cs := compressedRings(t, tr, k)
					red := codecSum[float32]()
					if avg {
						red.Div = kernel.DivFunc[float32]()
					}
					for _, count := range codecCounts {
						bufs := make([][]float32, n)
						ref := make([]float64, count)
						scale := make([]float64, count) // sum of |x|: bounds the error of rounded partial sums
						for r := range n {
							bufs[r] = make([]float32, count)
							codecPattern(bufs[r], r, "random")
							for i, v := range bufs[r] {
								ref[i] += float64(v)
								scale[i] += math.Abs(float64(v))
							}
						}
						require.NoError(t, tr.do(t, func(r int) error { return AllReduceCompressed(cs[r], bufs[r], red) }))
						for r := 1; r < n; r++ {
							require.Equal(t, kernel.Bytes(bufs[0]), kernel.Bytes(bufs[r]), "count=%d rank %d differs from rank 0", count, r)
						}
						if n == 1 {
							continue
						}
						// The inputs, each of the n-2 partial sums forwarded and the
						// final value are rounded once: n roundings, each off by at
						// most half an ulp (2^-8 relative for bf16, 2^-11 for fp16)
						// of a value no larger than scale, or half fp16's smallest
						// subnormal (2^-25).
						eps, tiny := 0x1p-8, 0.0
						if k == codec.FP16 {
							eps, tiny = 0x1p-11, 0x1p-25
						}
						div := 1.0
						if avg {
							div = float64(n)
						}
						for i, v := range bufs[0] {
							bound := float64(n) * ((eps+0x1p-24)*scale[i]/div + tiny)
							require.InDelta(t, ref[i]/div, float64(v), bound, "count=%d i=%d", count, i)
						}
					}
				})
			}
		}
	}
}

// TestCompressedBacksOff: random bytes are tried rarely, and every piece
// still arrives; zeros are compressed every time.
func TestCompressedBacksOff(t *testing.T) {
	opt := Options{SegmentBytes: 1024, MinSegmentBytes: 1024, Depth: 4}
	tr := newTestRing(t, 3, opt, nil)
	cs := compressedRings(t, tr, codec.S2)
	bufs := make([][]uint8, 3)
	for r := range bufs {
		bufs[r] = make([]uint8, 1<<20)
		rng := rand.New(rand.NewPCG(uint64(r), 3))
		for i := range bufs[r] {
			bufs[r][i] = uint8(rng.Uint32())
		}
	}
	require.NoError(t, tr.do(t, func(r int) error { return AllReduceCompressed(cs[r], bufs[r], codecSum[uint8]()) }))
	st := cs[0].Stats()
	pieces := st.Tried + st.Skipped
	require.Greater(t, pieces, 500)
	require.Zero(t, st.Compressed)
	require.Less(t, st.Tried, pieces/8, "incompressible pieces are seldom tried: %+v", st)
	require.Equal(t, st.RawBytes, st.WireBytes)

	cs[0].ResetStats()
	for r := range bufs {
		clear(bufs[r])
	}
	require.NoError(t, tr.do(t, func(r int) error { return AllReduceCompressed(cs[r], bufs[r], codecSum[uint8]()) }))
	st = cs[0].Stats()
	// The back-off left from the random call delays the first tries only.
	require.Greater(t, st.Compressed, pieces*3/4, "%+v", st)
	require.Less(t, st.WireBytes*10, st.RawBytes, "%+v", st)
}

// TestCompressedNoAllocs: a compressed allreduce allocates nothing once its
// buffers exist (lossless and lossy).
func TestCompressedNoAllocs(t *testing.T) {
	if codecRaceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, k := range []codec.Kind{codec.S2, codec.Zstd, codec.BF16} {
		t.Run(k.String(), func(t *testing.T) {
			tr := newTestRing(t, 3, Options{SegmentBytes: 4096, MinSegmentBytes: 1024, Depth: 4}, nil)
			cs := compressedRings(t, tr, k)
			bufs := make([][]float32, 3)
			for r := range bufs {
				bufs[r] = make([]float32, 50_000)
				codecPattern(bufs[r], r, "sparse")
			}
			red := codecSum[float32]()
			for range 10 { // buffers grow to their steady size (zstd's tables, too)
				require.NoError(t, tr.do(t, func(r int) error { return AllReduceCompressed(cs[r], bufs[r], red) }))
			}
			harness := testing.AllocsPerRun(5, func() {
				require.NoError(t, tr.do(t, func(int) error { return nil }))
			})
			allocs := testing.AllocsPerRun(10, func() {
				require.NoError(t, tr.do(t, func(r int) error { return AllReduceCompressed(cs[r], bufs[r], red) }))
			})
			plain := testing.AllocsPerRun(5, func() {
				require.NoError(t, tr.do(t, func(r int) error { return AllReduce(tr.ranks[r].fwd, bufs[r], red) }))
			})
			t.Logf("harness %v plain %v compressed %v", harness, plain, allocs)
			// The harness's goroutines allocate (a few, varying); the
			// uncompressed ring allocates nothing of its own.
			require.LessOrEqual(t, allocs, max(harness, plain), "allocations per call beyond the harness's own")
		})
	}
}

// BenchmarkCompressedAllReduce measures the codecs' CPU cost in-process (mem
// links, where the wire is a memcpy): compression only pays on a slower
// link, see docs/compression.md for those figures.
//
//	go test ./ring -run XXX -bench CompressedAllReduce
func BenchmarkCompressedAllReduce(b *testing.B) {
	const n, count = 3, 4 << 20 // 16 MiB of float32
	for _, data := range []string{"sparse", "random"} {
		for _, k := range []codec.Kind{codec.None, codec.S2, codec.Zstd, codec.BF16} {
			b.Run(fmt.Sprintf("%s/%v", data, k), func(b *testing.B) {
				tr := newTestRing(b, n, DefaultOptions, nil)
				cs := make([]*Compressed, n) // as collective makes them (512 KiB lossless pieces)
				for r, rk := range tr.ranks {
					c, err := NewCompressed(rk.fwd, Codec(k))
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(c.Close)
					cs[r] = c
				}
				bufs := make([][]float32, n)
				for r := range bufs {
					bufs[r] = make([]float32, count)
					codecPattern(bufs[r], r, data)
				}
				red := codecSum[float32]()
				red.Div = kernel.DivFunc[float32]() // Avg keeps the values where they are
				b.SetBytes(4 * count)
				for b.Loop() {
					err := tr.do(b, func(r int) error {
						if k == codec.None {
							return AllReduce(tr.ranks[r].fwd, bufs[r], red)
						}
						return AllReduceCompressed(cs[r], bufs[r], red)
					})
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
