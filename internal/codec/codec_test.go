package codec

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/klauspost/compress/s2"
	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	for s, want := range map[string]Kind{"": None, "none": None, "s2": S2, "zstd": Zstd, "bf16": BF16, "fp16": FP16, "bfloat16": BF16, "half": FP16} {
		k, err := Parse(s)
		require.NoError(t, err, s)
		require.Equal(t, want, k, s)
	}
	for k := None; k < numKinds; k++ {
		got, err := Parse(k.String())
		require.NoError(t, err)
		require.Equal(t, k, got)
	}
	for _, s := range []string{"gzip", "S2 ", "bf8"} {
		_, err := Parse(s)
		require.ErrorIs(t, err, ErrUnknown, s)
	}
	require.True(t, BF16.Lossy() && FP16.Lossy() && !S2.Lossy() && !None.Lossy())
	require.True(t, S2.Lossless() && Zstd.Lossless() && !BF16.Lossless() && !None.Lossless())
	_, err := New(Kind(200))
	require.ErrorIs(t, err, ErrUnknown)
}

// sample makes n bytes of the given compressibility: "zeros", "sparse"
// (float32s, 90% zero), "rows" (rows of 256 float32s, 90% zero), "random",
// or "text"-like repetition.
func sample(rng *rand.Rand, n int, kind string) []byte {
	b := make([]byte, n)
	switch kind {
	case "sparse":
		for i := 0; i+4 <= n; i += 4 {
			if rng.IntN(10) == 0 {
				binary.LittleEndian.PutUint32(b[i:], math.Float32bits(float32(rng.NormFloat64())))
			}
		}
	case "rows": // float32 rows of 256 (an embedding's), 90% of them zero
		for row := 0; row < n; row += 1024 {
			if rng.IntN(10) != 0 {
				continue
			}
			for i := row; i+4 <= min(n, row+1024); i += 4 {
				binary.LittleEndian.PutUint32(b[i:], math.Float32bits(float32(rng.NormFloat64())))
			}
		}
	case "random":
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	case "text":
		words := []string{"ring ", "allreduce ", "gradient ", "zero ", "rank "}
		for i := 0; i < n; {
			i += copy(b[i:], words[rng.IntN(len(words))])
		}
	}
	return b
}

// TestLosslessRoundTrip: whatever the data and size, what Compress sends
// decodes to the input exactly; compressible data is sent compressed.
func TestLosslessRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, k := range []Kind{S2, Zstd} {
		c, err := New(k)
		require.NoError(t, err)
		defer c.Close()
		for range 300 {
			n := rng.IntN(70_000)
			if rng.IntN(4) == 0 {
				n = rng.IntN(100)
			}
			kind := []string{"zeros", "sparse", "rows", "random", "text"}[rng.IntN(5)]
			src := sample(rng, n, kind)
			c.skip = 0 // every try counts here; back-off has its own test
			dst := make([]byte, MaxEncoded(n))
			payload, flag := c.Compress(dst, src)
			if flag == Raw {
				require.Equal(t, src, payload)
				// Raw only when nothing compresses: random bytes, a short
				// vector of rows that happen to be nonzero, or a tiny one
				// (whose compressed form cannot save 1/8).
				require.True(t, kind == "random" || kind == "rows" && n < 1<<14 || n < 256, "%v %s n=%d sent raw", k, kind, n)
				continue
			}
			require.Equal(t, Compressed, flag)
			require.Less(t, len(payload), n-n/payShift+1)
			var hb [HeaderSize]byte
			Header{Flag: flag, Len: len(payload)}.Put(hb[:])
			h, err := ParseHeader(hb[:], n)
			require.NoError(t, err)
			require.Equal(t, len(payload), h.Len)
			out := make([]byte, n)
			require.NoError(t, c.Decompress(out, payload))
			require.Equal(t, src, out, "%v %s n=%d", k, kind, n)
			require.Error(t, c.Decompress(out[:n-1], payload), "a length other than the segment's is corrupt")
		}
	}
}

// TestDecompressRejectsGarbage: corrupted payloads are errors, never panics
// or writes beyond dst.
func TestDecompressRejectsGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, k := range []Kind{S2, Zstd} {
		c, err := New(k)
		require.NoError(t, err)
		defer c.Close()
		src := sample(rng, 10_000, "sparse")
		payload, flag := c.Compress(make([]byte, MaxEncoded(len(src))), src)
		require.Equal(t, Compressed, flag)
		payload = append([]byte(nil), payload...)
		for range 500 {
			bad := append([]byte(nil), payload...)
			switch rng.IntN(3) {
			case 0:
				bad = bad[:rng.IntN(len(bad))]
			case 1:
				for range 1 + rng.IntN(8) {
					bad[rng.IntN(len(bad))] ^= byte(1 + rng.IntN(255))
				}
			case 2:
				bad = sample(rng, rng.IntN(200), "random")
			}
			guard := make([]byte, len(src)+64)
			out := guard[:len(src)]
			if err := c.Decompress(out, bad); err == nil {
				continue // a flip in literal bytes decodes, to other bytes: the transport's job
			} else {
				require.ErrorIs(t, err, ErrCorrupt)
			}
			for _, b := range guard[len(src):] {
				require.Zero(t, b, "wrote past dst")
			}
		}
	}
}

func FuzzDecompress(f *testing.F) {
	f.Add([]byte{}, 10)
	f.Add([]byte{methodCodec, 0x0a, 0x00, 0x00}, 10)
	f.Add([]byte{methodSparse, 0x02, 1, 2, 3, 4, 5, 6}, 10)
	f.Fuzz(func(t *testing.T, payload []byte, n int) {
		if n < 1 || n > 1<<16 {
			return
		}
		for _, k := range []Kind{S2, Zstd} {
			c, _ := New(k)
			_ = c.Decompress(make([]byte, n), payload)
			c.Close()
		}
	})
}

func TestParseHeaderChecksLengths(t *testing.T) {
	var b [HeaderSize]byte
	for _, tc := range []struct {
		h   Header
		raw int
		ok  bool
	}{
		{Header{Raw, 100}, 100, true},
		{Header{Raw, 99}, 100, false},
		{Header{Compressed, 99}, 100, true},
		{Header{Compressed, 100}, 100, false},
		{Header{Compressed, 1 << 30}, 100, false},
		{Header{Flag(7), 10}, 100, false},
	} {
		tc.h.Put(b[:])
		_, err := ParseHeader(b[:], tc.raw)
		if tc.ok {
			require.NoError(t, err, "%+v", tc.h)
		} else {
			require.ErrorIs(t, err, ErrCorrupt, "%+v", tc.h)
		}
	}
	Header{Raw, 1}.Put(b[:])
	b[2] = 1
	_, err := ParseHeader(b[:], 1)
	require.ErrorIs(t, err, ErrCorrupt)
	_, err = ParseHeader(b[:4], 1)
	require.ErrorIs(t, err, ErrCorrupt)
}

// TestBackOff: after failures the encoder skips a doubling number of
// segments, up to maxSkip, and a success resets it.
func TestBackOff(t *testing.T) {
	c, err := New(S2)
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(5, 6))
	random := sample(rng, 4096, "random")
	dst := make([]byte, MaxEncoded(4096))
	var tried []int
	for i := range 200 {
		before := c.stats.Tried
		_, flag := c.Compress(dst, random)
		require.Equal(t, Raw, flag)
		if c.stats.Tried > before {
			tried = append(tried, i)
		}
	}
	require.Equal(t, []int{0, 2, 5, 10, 19, 36, 69, 102, 135, 168}, tried, "gaps 1, 2, 4, ... 32")
	// Compressible data is found again within maxSkip+1 segments.
	zeros := make([]byte, 4096)
	n := 0
	for ; n <= maxSkip+1; n++ {
		if _, flag := c.Compress(dst, zeros); flag == Compressed {
			break
		}
	}
	require.LessOrEqual(t, n, maxSkip)
	for range 10 {
		_, flag := c.Compress(dst, zeros)
		require.Equal(t, Compressed, flag)
	}
}

// TestLossyRoundTrip: Encode and Decode are the kernels' conversions;
// RoundF32 is idempotent (a rounded value survives the wire unchanged).
func TestLossyRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, k := range []Kind{BF16, FP16} {
		for range 50 {
			n := rng.IntN(3000)
			v := make([]float32, n)
			for i := range v {
				v[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(12)-8)))
			}
			wire := make([]byte, k.WireSize(n))
			EncodeF32(k, wire, v)
			back := make([]float32, n)
			DecodeF32(k, back, wire)
			eps := 0x1p-8
			if k == FP16 {
				eps = 0x1p-11
			}
			for i := range v {
				if k == FP16 && math.Abs(float64(v[i])) > 65504 {
					require.True(t, math.IsInf(float64(back[i]), 0))
					continue
				}
				require.InDelta(t, v[i], back[i], eps*math.Abs(float64(v[i]))+0x1p-25, "%v %v", k, v[i])
			}
			again := append([]float32(nil), back...)
			RoundF32(k, again, wire)
			require.Equal(t, back, again, "rounding is idempotent")
		}
	}
}

func TestNoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("under the race detector sync.Pool drops items, and zstd's pools allocate")
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for _, k := range []Kind{S2, Zstd} {
		c, err := New(k)
		require.NoError(t, err)
		src := sample(rng, 256<<10, "sparse")
		dst := make([]byte, MaxEncoded(len(src)))
		out := make([]byte, len(src))
		for range 3 {
			p, _ := c.Compress(dst, src)
			require.NoError(t, c.Decompress(out, p))
		}
		allocs := testing.AllocsPerRun(20, func() {
			c.skip = 0
			p, flag := c.Compress(dst, src)
			if flag != Compressed || c.Decompress(out, p) != nil {
				t.Fatal("round trip failed")
			}
		})
		require.Zero(t, allocs, k.String())
		c.Close()
	}
	v := make([]float32, 1<<16)
	wire := make([]byte, BF16.WireSize(len(v)))
	require.Zero(t, testing.AllocsPerRun(10, func() { RoundF32(BF16, v, wire) }))
}

func BenchmarkCodecs(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, data := range []string{"sparse", "rows", "random"} {
		src := sample(rng, 256<<10, data)
		for _, k := range []Kind{S2, Zstd} {
			c, _ := New(k)
			dst := make([]byte, MaxEncoded(len(src)))
			out := make([]byte, len(src))
			b.Run(k.String()+"/"+data+"/compress", func(b *testing.B) {
				b.SetBytes(int64(len(src)))
				for b.Loop() {
					c.skip = 0
					c.Compress(dst, src)
				}
			})
			p, flag := c.Compress(dst, src)
			if flag == Compressed {
				b.Run(k.String()+"/"+data+"/decompress", func(b *testing.B) {
					b.SetBytes(int64(len(src)))
					for b.Loop() {
						_ = c.Decompress(out, p)
					}
				})
			}
			c.Close()
		}
		// S2 by itself, what Compress did before it tried the bitmap form.
		b.Run("s2-alone/"+data+"/compress", func(b *testing.B) {
			dst := make([]byte, s2.MaxEncodedLen(len(src)))
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				s2.Encode(dst, src)
			}
		})
	}
	v := unsafe.Slice((*float32)(unsafe.Pointer(&sample(rng, 256<<10, "sparse")[0])), 64<<10)
	wire := make([]byte, BF16.WireSize(len(v)))
	for _, k := range []Kind{BF16, FP16} {
		b.Run(k.String()+"/encode", func(b *testing.B) {
			b.SetBytes(int64(4 * len(v)))
			for b.Loop() {
				EncodeF32(k, wire, v)
			}
		})
		b.Run(k.String()+"/decode", func(b *testing.B) {
			b.SetBytes(int64(4 * len(v)))
			for b.Loop() {
				DecodeF32(k, v, wire)
			}
		})
	}
}

// TestSparseForm: segments of mostly zero words take the bitmap form, which
// round-trips bit for bit at every length (tails that are not whole words,
// -0 and NaN payloads kept) and shrinks 90% scattered zeros at least 5x;
// denser segments fall back to S2 or zstd.
func TestSparseForm(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, k := range []Kind{S2, Zstd} {
		c, err := New(k)
		require.NoError(t, err)
		for _, n := range []int{64, 65, 66, 67, 100, 1001, 4096, 1 << 19} {
			src := sample(rng, n, "sparse")
			src[0], src[1], src[2], src[3] = 0, 0, 0, 0x80 // -0 is not zero
			if n >= 12 {
				binary.LittleEndian.PutUint32(src[8:], 0x7fc00001) // a NaN payload
			}
			for i := 4 * (n / 4); i < n; i++ {
				src[i] = byte(i) // the tail
			}
			dst := make([]byte, MaxEncoded(n))
			c.skip, c.wait = 0, 0
			out, flag := c.Compress(dst, src)
			require.Equal(t, Compressed, flag, "%v n=%d", k, n)
			require.Equal(t, methodSparse, out[0], "%v n=%d", k, n)
			if n >= 4096 {
				require.Less(t, 5*len(out), n, "%v n=%d: %d bytes", k, n, len(out))
			}
			got := make([]byte, n)
			require.NoError(t, c.Decompress(got, out))
			require.Equal(t, src, got, "%v n=%d", k, n)
		}
		// Half the words non-zero: too dense for the bitmap, S2/zstd then.
		src := sample(rng, 4096, "text")
		out, flag := c.Compress(make([]byte, MaxEncoded(4096)), src)
		require.Equal(t, Compressed, flag)
		require.Equal(t, methodCodec, out[0])
		c.Close()
	}
}

// TestSparseFormRefusesBadPayloads: lengths and bitmaps are checked before
// a byte is written.
func TestSparseFormRefusesBadPayloads(t *testing.T) {
	c, err := New(S2)
	require.NoError(t, err)
	defer c.Close()
	dst := make([]byte, 10) // 2 words and 2 tail bytes: 1 bitmap byte
	for _, p := range [][]byte{
		{},
		{methodSparse},                   // no bitmap
		{methodSparse, 0x01},             // one word marked, none sent
		{methodSparse, 0x04, 0, 0, 0, 0}, // a word past the segment
		{methodSparse, 0x00, 1},          // tail cut short
		{methodSparse, 0x00, 1, 2, 3},    // tail too long
		{9, 0, 0},                        // unknown method
	} {
		require.ErrorIs(t, c.Decompress(dst, p), ErrCorrupt, "%x", p)
	}
	require.NoError(t, c.Decompress(dst, []byte{methodSparse, 0x02, 1, 2, 3, 4, 5, 6}))
	require.Equal(t, []byte{0, 0, 0, 0, 1, 2, 3, 4, 5, 6}, dst)
}
