package kernel

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
)

// Every implementation this CPU runs is held to the portable one: same bits
// for every (type, op, form), every length and offset, with aliasing, and
// with guard elements around dst left alone.

// TestImplementations: the best implementation the CPU runs serves calls.
func TestImplementations(t *testing.T) {
	var names []string
	for _, i := range impls() {
		names = append(names, i.name)
	}
	t.Logf("kernels: in use %s; this CPU runs %v", Implementation(), names)
	require.Equal(t, impls()[0].name, Implementation())
	require.Equal(t, "portable", names[len(names)-1])
	all := candidates()
	require.Equal(t, "portable", all[len(all)-1].name)
	for _, c := range all {
		if c.missing == "" {
			// The first candidate the CPU runs is the one in use: an
			// AVX-512 machine is served AVX-512.
			require.Equal(t, c.name, Implementation())
			break
		}
	}
}

// same reports whether got is an acceptable result where the portable kernel
// gave want: the same bits, or, where want is a NaN, any NaN.
func same[T Elem](got, want T) bool {
	if want != want {
		return got != got
	}
	g, w := got, want
	return string(Bytes([]T{g})) == string(Bytes([]T{w}))
}

// sameSlices fails t with the first differing index.
func sameSlices[T Elem](t *testing.T, got, want []T, format string, args ...any) {
	t.Helper()
	require.Equal(t, len(want), len(got))
	for i := range want {
		if !same(got[i], want[i]) {
			require.Failf(t, "mismatch", "%s: index %d of %d: got %v (%x), want %v (%x)",
				fmt.Sprintf(format, args...), i, len(want), got[i], Bytes(got[i:i+1]), want[i], Bytes(want[i:i+1]))
		}
	}
}

// gen returns a random T, with the values that exercise the edge cases often.
func gen[T Elem](r *rand.Rand) T {
	var z T
	switch p := any(&z).(type) {
	case *float32:
		*p = genF32(r)
	case *float64:
		*p = genF64(r)
	case *int8, *uint8:
		*(*uint8)(unsafe.Pointer(&z)) = uint8(r.Uint32())
	case *int32, *uint32:
		v := r.Uint32()
		switch r.IntN(8) {
		case 0:
			v = 1 << 31
		case 1:
			v = 1<<31 - 1
		case 2:
			v = 0xffffffff
		case 3:
			v = uint32(r.IntN(5))
		}
		*(*uint32)(unsafe.Pointer(&z)) = v
	case *int64, *uint64:
		v := r.Uint64()
		switch r.IntN(8) {
		case 0:
			v = 1 << 63
		case 1:
			v = 1<<63 - 1
		case 2:
			v = ^uint64(0)
		case 3:
			v = uint64(r.IntN(5))
		case 4:
			v = uint64(r.Uint32()) // high half zero: exercises the partial products
		}
		*(*uint64)(unsafe.Pointer(&z)) = v
	}
	return z
}

var specialF32 = []float32{
	0, float32(math.Copysign(0, -1)), 1, -1, 0.5, -2,
	float32(math.Inf(1)), float32(math.Inf(-1)),
	math.MaxFloat32, -math.MaxFloat32, math.SmallestNonzeroFloat32, -math.SmallestNonzeroFloat32,
	math.Float32frombits(0x007fffff), math.Float32frombits(0x80400000), // subnormals
	math.Float32frombits(0x00800000),                                   // smallest normal
	math.Float32frombits(0x7fc00000), math.Float32frombits(0xffc00000), // quiet NaNs
	math.Float32frombits(0x7f800001), math.Float32frombits(0xff812345), // signalling NaNs
}

func genF32(r *rand.Rand) float32 {
	switch r.IntN(6) {
	case 0:
		return specialF32[r.IntN(len(specialF32))]
	case 1:
		return math.Float32frombits(r.Uint32()) // anything, NaNs included
	case 2:
		return float32(r.IntN(5) - 2) // small integers: many equal pairs
	}
	// Moderate magnitudes, so that sums and products are mostly finite.
	return float32(math.Ldexp(r.Float64()-0.5, r.IntN(40)-20))
}

var specialF64 = []float64{
	0, math.Copysign(0, -1), 1, -1, 0.5, -2, math.Inf(1), math.Inf(-1),
	math.MaxFloat64, -math.MaxFloat64, math.SmallestNonzeroFloat64, -math.SmallestNonzeroFloat64,
	math.Float64frombits(0x000fffffffffffff), math.Float64frombits(0x8008000000000000),
	math.Float64frombits(0x0010000000000000),
	math.NaN(), math.Float64frombits(0xfff8000000000000),
	math.Float64frombits(0x7ff0000000000001), math.Float64frombits(0xfff0000000012345),
}

func genF64(r *rand.Rand) float64 {
	switch r.IntN(6) {
	case 0:
		return specialF64[r.IntN(len(specialF64))]
	case 1:
		return math.Float64frombits(r.Uint64())
	case 2:
		return float64(r.IntN(5) - 2)
	}
	return math.Ldexp(r.Float64()-0.5, r.IntN(200)-100)
}

func fill[T Elem](r *rand.Rand, s []T) {
	for i := range s {
		s[i] = gen[T](r)
	}
}

// lengths covers every tail of every loop (0..300) and a few long slices.
func lengths() []int {
	var ns []int
	for n := 0; n <= 300; n++ {
		ns = append(ns, n)
	}
	return append(ns, 511, 1000, 1021, 4096+13, 65536+7)
}

const guard = 5 // elements after dst (and before it, up to the offset) that must not change

func checkImpl[T Elem](t *testing.T, r *rand.Rand, name string, got, want *[numOps]Kernel[T]) {
	var zero T
	for op := range numOps {
		for _, n := range lengths() {
			off := r.IntN(8) // unaligned starts
			total := off + n + guard
			a, b, d := make([]T, total), make([]T, total), make([]T, total)
			fill(r, a)
			fill(r, b)
			fill(r, d)
			// Many equal and (±0, ∓0) pairs, in both orders.
			for i := range b {
				switch r.IntN(10) {
				case 0:
					b[i] = a[i]
				case 1:
					b[i] = -a[i]
				}
			}
			where := func(form string) string {
				return fmt.Sprintf("%s %s-%T %s n=%d off=%d", name, op, zero, form, n, off)
			}
			lo, hi := off, off+n

			// Reduce: dst = op(dst, src), src longer than dst.
			w := append([]T(nil), d...)
			g := append([]T(nil), d...)
			want[op].Reduce(w[lo:hi], a[lo:])
			got[op].Reduce(g[lo:hi], a[lo:])
			sameSlices(t, g, w, "%s", where("Reduce"))
			requireUntouched(t, g, d, lo, hi, where("Reduce"))

			// ReduceTo into a separate dst.
			w = append([]T(nil), d...)
			g = append([]T(nil), d...)
			want[op].ReduceTo(w[lo:hi], a[lo:], b[lo:])
			got[op].ReduceTo(g[lo:hi], a[lo:], b[lo:])
			sameSlices(t, g, w, "%s", where("ReduceTo"))
			requireUntouched(t, g, d, lo, hi, where("ReduceTo"))
			expect := w

			// ReduceTo with dst == a and with dst == b.
			g = append([]T(nil), a...)
			got[op].ReduceTo(g[lo:hi], g[lo:hi], b[lo:])
			sameSlices(t, g[lo:hi], expect[lo:hi], "%s", where("ReduceTo dst==a"))
			requireUntouched(t, g, a, lo, hi, where("ReduceTo dst==a"))
			g = append([]T(nil), b...)
			got[op].ReduceTo(g[lo:hi], a[lo:], g[lo:hi])
			sameSlices(t, g[lo:hi], expect[lo:hi], "%s", where("ReduceTo dst==b"))
			requireUntouched(t, g, b, lo, hi, where("ReduceTo dst==b"))
		}
	}
}

// requireUntouched checks that got equals orig outside [lo, hi).
func requireUntouched[T Elem](t *testing.T, got, orig []T, lo, hi int, where string) {
	t.Helper()
	require.Equal(t, Bytes(orig[:lo]), Bytes(got[:lo]), "%s: elements before dst changed", where)
	require.Equal(t, Bytes(orig[hi:]), Bytes(got[hi:]), "%s: elements after dst changed", where)
}

// TestKernelsMatchPortable holds every implementation of this architecture
// that the CPU runs to the portable one; the others are skipped, saying
// what the CPU lacks. Run with -v, its log says which ran here (CI prints
// it).
func TestKernelsMatchPortable(t *testing.T) {
	want := portable.build()
	for _, c := range candidates() {
		i := c.impl
		t.Run(i.name, func(t *testing.T) {
			if c.missing != "" {
				t.Skipf("kernels: %s not tested: %s", i.name, c.missing)
			}
			t.Logf("kernels: %s tested on this CPU", i.name)
			got := i.build()
			r := rand.New(rand.NewPCG(1, uint64(len(i.name))))
			checkImpl(t, r, i.name, &got.f32, &want.f32)
			checkImpl(t, r, i.name, &got.f64, &want.f64)
			checkImpl(t, r, i.name, &got.i32, &want.i32)
			checkImpl(t, r, i.name, &got.u32, &want.u32)
			checkImpl(t, r, i.name, &got.i64, &want.i64)
			checkImpl(t, r, i.name, &got.u64, &want.u64)
			checkImpl(t, r, i.name, &got.i8, &want.i8)
			checkImpl(t, r, i.name, &got.u8, &want.u8)
			checkDiv(t, r, i.name, got.divF32, want.divF32)
			checkDiv(t, r, i.name, got.divF64, want.divF64)
		})
	}
}

// checkDiv holds a division kernel to the portable one: the same bits for
// every length and offset, for the divisors Avg uses (rank counts) and for
// any divisor at all (zeros, infinities, NaNs, subnormals), with the
// elements around dst left alone.
func checkDiv[T float32 | float64](t *testing.T, r *rand.Rand, name string, got, want func([]T, T)) {
	divisors := []T{1, 2, 3, 4, 5, 6, 7, 8, 12, 1000, 1 << 20}
	for range 8 {
		divisors = append(divisors, gen[T](r))
	}
	for _, n := range lengths() {
		for _, div := range divisors {
			off := r.IntN(8)
			d := make([]T, off+n+guard)
			fill(r, d)
			lo, hi := off, off+n
			w := append([]T(nil), d...)
			g := append([]T(nil), d...)
			want(w[lo:hi], div)
			got(g[lo:hi], div)
			where := fmt.Sprintf("%s Div-%T by %v n=%d off=%d", name, div, div, n, off)
			sameSlices(t, g, w, "%s", where)
			requireUntouched(t, g, d, lo, hi, where)
		}
	}
}

// DivFunc divides with the implementation in use, and by the int it is
// given: 7/3 is float32(7)/float32(3), correctly rounded.
func TestDivFuncDispatch(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	want := current.build()
	x := make([]float32, 1001)
	fill(r, x)
	g, w := append([]float32(nil), x...), append([]float32(nil), x...)
	DivFunc[float32]()(g, 3)
	want.divF32(w, 3)
	require.Equal(t, Bytes(w), Bytes(g))
	y := []float64{7, 1, math.Copysign(0, -1), math.Inf(1)}
	DivFunc[float64]()(y, 3)
	require.Equal(t, []float64{7.0 / 3, 1.0 / 3, math.Copysign(0, -1), math.Inf(1)}, y)
	require.True(t, math.Signbit(y[2]))
	require.Nil(t, DivFunc[int32]())
}

// TestDispatch checks that For hands out the kernels of the implementation in use.
func TestDispatch(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	want := current.build()
	k, ok := For[float32](Min)
	require.True(t, ok)
	a, b := make([]float32, 100), make([]float32, 100)
	fill(r, a)
	fill(r, b)
	g, w := make([]float32, 100), make([]float32, 100)
	k.ReduceTo(g, a, b)
	want.f32[Min].ReduceTo(w, a, b)
	require.Equal(t, Bytes(w), Bytes(g))
	_, ok = For[float32](numOps)
	require.False(t, ok)
}

// TestFloatMinMaxRule holds every implementation to the documented rule
// directly, not only to the portable kernel: NaN in, NaN out; -0 < +0 in
// either order; otherwise the usual order. Every pair of special values is
// placed at every position of a 37-element slice (vector body and tail).
func TestFloatMinMaxRule(t *testing.T) {
	negZero := float32(math.Copysign(0, -1))
	for _, i := range impls() {
		tb := i.build()
		for _, x := range specialF32 {
			for _, y := range specialF32 {
				a, b := make([]float32, 37), make([]float32, 37)
				for j := range a {
					a[j], b[j] = x, y
				}
				mn, mx := make([]float32, 37), make([]float32, 37)
				tb.f32[Min].ReduceTo(mn, a, b)
				tb.f32[Max].ReduceTo(mx, a, b)
				for j := range a {
					switch {
					case x != x || y != y:
						require.True(t, mn[j] != mn[j], "%s: min(%v, %v) = %v, want NaN", i.name, x, y, mn[j])
						require.True(t, mx[j] != mx[j], "%s: max(%v, %v) = %v, want NaN", i.name, x, y, mx[j])
					case x == 0 && y == 0:
						wantMin, wantMax := float32(0), float32(0)
						if math.Signbit(float64(x)) || math.Signbit(float64(y)) {
							wantMin = negZero
						}
						if math.Signbit(float64(x)) && math.Signbit(float64(y)) {
							wantMax = negZero
						}
						require.Equal(t, math.Float32bits(wantMin), math.Float32bits(mn[j]), "%s: min(%v, %v)", i.name, x, y)
						require.Equal(t, math.Float32bits(wantMax), math.Float32bits(mx[j]), "%s: max(%v, %v)", i.name, x, y)
					default:
						lo, hi := x, y
						if y < x {
							lo, hi = y, x
						}
						require.Equal(t, math.Float32bits(lo), math.Float32bits(mn[j]), "%s: min(%v, %v)", i.name, x, y)
						require.Equal(t, math.Float32bits(hi), math.Float32bits(mx[j]), "%s: max(%v, %v)", i.name, x, y)
					}
				}
			}
		}
	}
}

func TestShortSourcePanics(t *testing.T) {
	for _, i := range impls() {
		tb := i.build()
		dst := make([]float32, 10)
		require.Panics(t, func() { tb.f32[Sum].Reduce(dst, make([]float32, 9)) }, i.name)
		require.Panics(t, func() { tb.f32[Sum].ReduceTo(dst, make([]float32, 10), make([]float32, 9)) }, i.name)
		require.Panics(t, func() { tb.f32[Sum].ReduceTo(dst, make([]float32, 9), make([]float32, 10)) }, i.name)
		tb.f32[Sum].Reduce(nil, nil)
		tb.f32[Sum].ReduceTo(nil, nil, nil)
	}
}

// FuzzFloat32 compares every implementation with the portable one on
// arbitrary float32 bit patterns and lengths.
func FuzzFloat32(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0x80, 0, 0, 0, 0}, uint8(1))
	f.Add([]byte{0, 0, 0xc0, 0x7f, 0, 0, 0x80, 0x3f, 1, 2, 3, 4, 5, 6, 7, 8}, uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, off uint8) {
		n := len(data) / 8
		a := make([]float32, n)
		b := make([]float32, n)
		for i := range n {
			a[i] = math.Float32frombits(uint32(data[8*i]) | uint32(data[8*i+1])<<8 | uint32(data[8*i+2])<<16 | uint32(data[8*i+3])<<24)
			b[i] = math.Float32frombits(uint32(data[8*i+4]) | uint32(data[8*i+5])<<8 | uint32(data[8*i+6])<<16 | uint32(data[8*i+7])<<24)
		}
		lo := min(int(off%8), n)
		want := portable.build()
		for _, i := range impls() {
			got := i.build()
			for op := range numOps {
				g, w := make([]float32, n-lo), make([]float32, n-lo)
				got.f32[op].ReduceTo(g, a[lo:], b[lo:])
				want.f32[op].ReduceTo(w, a[lo:], b[lo:])
				sameSlices(t, g, w, "%s %s", i.name, op)
			}
		}
	})
}

// TestAVX512FloatMinMaxAlgorithm checks, in Go, the lane arithmetic of the
// AVX-512 float min/max kernels (which the machine running the test may not
// have): Intel's VMINPS/VMAXPS rule, dst = src1 <op> src2 ? src1 : src2 (so
// src2 when unordered or equal), then VPORD, or VPTERNLOGD with imm 0xd4 and
// the sign mask, as asmgen emits them.
func TestAVX512FloatMinMaxAlgorithm(t *testing.T) {
	vmin := func(s1, s2 float32) float32 {
		if s1 < s2 {
			return s1
		}
		return s2
	}
	vmax := func(s1, s2 float32) float32 {
		if s1 > s2 {
			return s1
		}
		return s2
	}
	// ternlog returns the VPTERNLOG result for dst (a), src2 (b), src3 (c).
	ternlog := func(imm uint8, a, b, c uint32) uint32 {
		var out uint32
		for i := range 32 {
			idx := (a>>i&1)<<2 | (b>>i&1)<<1 | c>>i&1
			out |= uint32(imm>>idx&1) << i
		}
		return out
	}
	bits := math.Float32bits
	for _, a := range specialF32 {
		for _, b := range specialF32 {
			// min: T = min(a, b); A = min(b, a); A |= T
			gotMin := bits(vmin(b, a)) | bits(vmin(a, b))
			// max: T = max(a, b); A = max(b, a); A = vpternlogd(0xd4, A, T, sign)
			gotMax := ternlog(0xd4, bits(vmax(b, a)), bits(vmax(a, b)), 0x80000000)
			wantMin, wantMax := min(a, b), max(a, b)
			if wantMin != wantMin {
				require.True(t, math.IsNaN(float64(math.Float32frombits(gotMin))), "min(%v, %v)", a, b)
				require.True(t, math.IsNaN(float64(math.Float32frombits(gotMax))), "max(%v, %v)", a, b)
				continue
			}
			require.Equal(t, bits(wantMin), gotMin, "min(%v, %v)", a, b)
			require.Equal(t, bits(wantMax), gotMax, "max(%v, %v)", a, b)
		}
	}
}
