package kernel

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"
)

// The references below are deliberately naive: values computed in float64
// and rounding by comparing distances to the two neighbours.

// refF16Value is the value of the non-negative binary16 encoding k; 0x7c00
// (Inf) is given the value 2^16, the next step of an unbounded exponent,
// which is how IEEE round-to-nearest decides overflow.
func refF16Value(k uint16) float64 {
	if k < 0x400 {
		return float64(k) * 0x1p-24
	}
	return math.Ldexp(float64(1024+k&0x3ff), int(k>>10)-25)
}

func refF16ToF32(h uint16) float32 {
	k := h & 0x7fff
	var v float64
	switch {
	case k > 0x7c00:
		return float32(math.NaN())
	case k == 0x7c00:
		v = math.Inf(1)
	default:
		v = refF16Value(k)
	}
	if h&0x8000 != 0 {
		v = -v
	}
	return float32(v)
}

// refRound rounds |x| to the encodings 0..top of a format whose values
// value(k) increase with k, ties to the even encoding.
func refRound(ax float64, top uint32, value func(uint32) float64) uint32 {
	k := uint32(sort.Search(int(top)+1, func(i int) bool { return value(uint32(i)) > ax })) - 1 // value(k) <= ax
	if k >= top {
		return top
	}
	dlo, dhi := ax-value(k), value(k+1)-ax
	if dhi < dlo || dhi == dlo && k&1 == 1 {
		return k + 1
	}
	return k
}

func refF32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	if f != f {
		return sign | 0x7e00 // any NaN; tests compare NaN-ness and sign only
	}
	ax := math.Abs(float64(f))
	return sign | uint16(refRound(ax, 0x7c00, func(k uint32) float64 { return refF16Value(uint16(k)) }))
}

func refBF16Value(k uint32) float64 {
	if k == 0x7f80 {
		return 0x1p128
	}
	return float64(math.Float32frombits(k << 16))
}

func refF32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	if f != f {
		return sign | 0x7fc0
	}
	return sign | uint16(refRound(math.Abs(float64(f)), 0x7f80, refBF16Value))
}

func convImpls() []struct {
	name string
	c    converters
} {
	var out []struct {
		name string
		c    converters
	}
	for _, i := range impls() {
		c := portableConverters
		if i.conv != nil {
			c = *i.conv
		}
		out = append(out, struct {
			name string
			c    converters
		}{i.name, c})
	}
	return out
}

// sameHalf compares binary16 results: equal bits, or both NaNs of the same sign.
func sameHalf(got, want uint16) bool {
	if want&0x7fff > 0x7c00 {
		return got&0x7fff > 0x7c00 && got&0x8000 == want&0x8000
	}
	return got == want
}

func TestF16ToF32Exhaustive(t *testing.T) {
	src := make([]uint16, 1<<16+3)
	for i := range 1 << 16 {
		src[i+3] = uint16(i)
	}
	for _, ci := range convImpls() {
		for off := range 4 { // unaligned starts and every tail length
			s := src[off:]
			got := make([]float32, len(s)+1)
			got[len(s)] = 42
			ci.c.f16ToF32(got[:len(s)], s)
			require.Equal(t, float32(42), got[len(s)], "%s: wrote past dst", ci.name)
			for i, h := range s {
				want := math.Float32bits(refF16ToF32(h))
				if h&0x7fff > 0x7c00 {
					// A NaN: quiet, sign and payload kept, the same bits on every path.
					want = uint32(h&0x8000)<<16 | 0x7fc00000 | uint32(h&0x3ff)<<13
				}
				if g := math.Float32bits(got[i]); g != want {
					require.Failf(t, "F16ToF32", "%s: %#04x -> %#08x, want %#08x", ci.name, h, g, want)
				}
			}
		}
	}
}

func TestBF16ToF32Exhaustive(t *testing.T) {
	src := make([]uint16, 1<<16+3)
	for i := range 1 << 16 {
		src[i+3] = uint16(i)
	}
	for _, ci := range convImpls() {
		for off := range 4 {
			s := src[off:]
			got := make([]float32, len(s))
			ci.c.bf16ToF32(got, s)
			for i, h := range s {
				// Exact: the high half of a float32, NaN payloads included.
				if g := math.Float32bits(got[i]); g != uint32(h)<<16 {
					require.Failf(t, "BF16ToF32", "%s: %#04x -> %#08x", ci.name, h, g)
				}
			}
		}
	}
	// The exported function, via the implementation in use.
	got := make([]float32, 3)
	BF16ToF32(got, []uint16{0x3f80, 0xc000, 0x7f80, 0xffff})
	require.Equal(t, []float32{1, -2, float32(math.Inf(1))}, got)
}

// f32Cases returns float32 inputs for the narrowing conversions: the edge
// values, every binary16 value, every midpoint between neighbours and the
// float32 values just either side of it, and random bit patterns.
func f32Cases(r *rand.Rand) []float32 {
	out := append([]float32(nil), specialF32...)
	out = append(out, 65504, 65519.996, 65520, 65536, 0x1p-24, 0x1p-25, 0x1p-26, 0x1.8p-25, 0x1p-14, 0x1.ff8p-15,
		math.Float32frombits(0x7f7fffff), math.Float32frombits(0x7f7f8000), math.Float32frombits(0x7f7f7fff),
		math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), math.Float32frombits(0x00008000))
	for k := uint16(0); k < 0x7c00; k++ {
		v := refF16Value(k)
		mid := float32((v + refF16Value(k+1)) / 2) // exact: 12 significant bits
		out = append(out, float32(v), mid, math.Nextafter32(mid, 0), math.Nextafter32(mid, 1e9))
	}
	for range 200000 {
		out = append(out, math.Float32frombits(r.Uint32()))
	}
	for range 100000 { // near the bfloat16 rounding boundary
		out = append(out, math.Float32frombits(r.Uint32()&^0xffff|0x8000+uint32(r.IntN(3))-1))
	}
	for i := range out {
		if r.IntN(2) == 0 {
			out[i] = -out[i]
		}
	}
	return out
}

func TestF32ToF16(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	src := f32Cases(r)
	for _, ci := range convImpls() {
		for off := range 4 {
			s := src[off:]
			got := make([]uint16, len(s)+1)
			got[len(s)] = 0xabcd
			ci.c.f32ToF16(got[:len(s)], s)
			require.Equal(t, uint16(0xabcd), got[len(s)], "%s: wrote past dst", ci.name)
			for i, f := range s {
				want := refF32ToF16(f)
				if !sameHalf(got[i], want) {
					require.Failf(t, "F32ToF16", "%s: %g (%#08x) -> %#04x, want %#04x", ci.name, f, math.Float32bits(f), got[i], want)
				}
				// Every path gives the portable bits, NaN payloads included.
				if p := f32ToF16(f); p != got[i] {
					require.Failf(t, "F32ToF16", "%s: %#08x -> %#04x, portable %#04x", ci.name, math.Float32bits(f), got[i], p)
				}
			}
		}
	}
}

func TestF32ToBF16(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	src := f32Cases(r)
	for _, ci := range convImpls() {
		for off := range 4 {
			s := src[off:]
			got := make([]uint16, len(s)+1)
			got[len(s)] = 0xabcd
			ci.c.f32ToBF16(got[:len(s)], s)
			require.Equal(t, uint16(0xabcd), got[len(s)], "%s: wrote past dst", ci.name)
			for i, f := range s {
				want := refF32ToBF16(f)
				ok := got[i] == want
				if f != f {
					ok = got[i]&0x7fff > 0x7f80 && got[i]&0x8000 == want&0x8000 // a NaN, same sign
				}
				if !ok {
					require.Failf(t, "F32ToBF16", "%s: %g (%#08x) -> %#04x, want %#04x", ci.name, f, math.Float32bits(f), got[i], want)
				}
				if p := f32ToBF16(f); p != got[i] {
					require.Failf(t, "F32ToBF16", "%s: %#08x -> %#04x, portable %#04x", ci.name, math.Float32bits(f), got[i], p)
				}
			}
		}
	}
}

func TestConvertExported(t *testing.T) {
	h := make([]uint16, 4)
	F32ToF16(h, []float32{1, -2, 1e6, float32(math.NaN()), 7})
	require.Equal(t, []uint16{0x3c00, 0xc000, 0x7c00}, h[:3])
	require.True(t, h[3]&0x7fff > 0x7c00)
	f := make([]float32, 3)
	F16ToF32(f, h)
	require.Equal(t, []float32{1, -2, float32(math.Inf(1))}, f)
	F32ToBF16(h, []float32{1, -2, math.MaxFloat32, float32(math.NaN())})
	require.Equal(t, []uint16{0x3f80, 0xc000, 0x7f80}, h[:3])
	require.True(t, h[3]&0x7fff > 0x7f80)
	require.Panics(t, func() { F32ToF16(make([]uint16, 3), make([]float32, 2)) })
	F32ToF16(nil, nil)
	F16ToF32(nil, nil)
}
