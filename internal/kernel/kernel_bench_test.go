package kernel

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"gonum.org/v1/gonum/blas/blas32"
)

// BenchmarkKernel measures the in-place form, dst = op(dst, src), named
// Kernel/<op>-<type>/<variant>/<size> with variant one of
//
//	plain     the obvious Go loop, e.g. for i := range dst { dst[i] += src[i] }
//	portable  the portable unrolled kernel (portable.go)
//	gonum     blas32.Axpy(1, src, dst) (float32 Sum only)
//	simd      the kernel For returns (named after Implementation(); absent
//	          when that is the portable one)
//
// Throughput (b.SetBytes) counts the bytes of dst once per call: a call reads
// dst and src and writes dst, so memory traffic is three times the figure.
//
//	go test -run '^$' -bench 'Kernel/.*-float32/' -benchtime 200ms ./internal/kernel/

var benchSizes = []struct {
	name  string
	bytes int
}{{"4KiB", 4 << 10}, {"256KiB", 256 << 10}, {"4MiB", 4 << 20}, {"64MiB", 64 << 20}}

// Two 64 MiB buffers, shared by every sub-benchmark and viewed as each type.
var benchDst, benchSrc []byte

func benchBufs[T Elem](bytes int, op Op) (dst, src []T) {
	if benchDst == nil {
		benchDst, benchSrc = make([]byte, 64<<20), make([]byte, 64<<20)
	}
	dst, src = FromBytes[T](benchDst[:bytes]), FromBytes[T](benchSrc[:bytes])
	r := rand.New(rand.NewPCG(5, 5))
	fill := func(s []T) {
		for i := range s {
			s[i] = T(r.IntN(200) - 100) // finite, normal, never NaN: no slow paths
		}
	}
	fill(dst)
	fill(src)
	if op == Prod { // keep repeated products from drifting to 0 or Inf
		for i := range src {
			src[i] = 1
		}
	}
	return dst, src
}

func plainSumF32(dst, src []float32) {
	for i := range dst {
		dst[i] += src[i]
	}
}

func plainProdF32(dst, src []float32) {
	for i := range dst {
		dst[i] *= src[i]
	}
}

func plainMinF32(dst, src []float32) {
	for i := range dst {
		dst[i] = min(dst[i], src[i])
	}
}

func plainMaxF32(dst, src []float32) {
	for i := range dst {
		dst[i] = max(dst[i], src[i])
	}
}

// plain returns the plain loop for op; float32 has concrete (non-generic) ones.
func plain[T Elem](op Op) func(dst, src []T) {
	if f, ok := any([numOps]func(dst, src []float32){plainSumF32, plainProdF32, plainMinF32, plainMaxF32}[op]).(func(dst, src []T)); ok {
		return f
	}
	switch op {
	case Sum:
		return func(dst, src []T) {
			for i := range dst {
				dst[i] += src[i]
			}
		}
	case Prod:
		return func(dst, src []T) {
			for i := range dst {
				dst[i] *= src[i]
			}
		}
	case Min:
		return func(dst, src []T) {
			for i := range dst {
				dst[i] = min(dst[i], src[i])
			}
		}
	}
	return func(dst, src []T) {
		for i := range dst {
			dst[i] = max(dst[i], src[i])
		}
	}
}

func gonumSum(dst, src []float32) {
	blas32.Axpy(1, blas32.Vector{N: len(src), Inc: 1, Data: src}, blas32.Vector{N: len(dst), Inc: 1, Data: dst})
}

func benchType[T Elem](b *testing.B) {
	tname := TypeOf[T]().String()
	for op := range numOps {
		variants := []struct {
			name string
			f    func(dst, src []T)
		}{
			{"plain", plain[T](op)},
			{"portable", table[T]()[op].Reduce},
		}
		if g, ok := any(gonumSum).(func(dst, src []T)); ok && op == Sum {
			variants = append(variants, struct {
				name string
				f    func(dst, src []T)
			}{"gonum", g})
		}
		if Implementation() != "portable" {
			k, _ := For[T](op)
			variants = append(variants, struct {
				name string
				f    func(dst, src []T)
			}{"simd", k.Reduce})
		}
		for _, v := range variants {
			for _, sz := range benchSizes {
				b.Run(fmt.Sprintf("%s-%s/%s/%s", op, tname, v.name, sz.name), func(b *testing.B) {
					dst, src := benchBufs[T](sz.bytes, op)
					b.SetBytes(int64(sz.bytes)) // bytes of dst, counted once
					b.ResetTimer()
					for b.Loop() {
						v.f(dst, src)
					}
				})
			}
		}
	}
}

func BenchmarkKernel(b *testing.B) {
	b.Logf("kernels: %s", Implementation())
	benchType[float32](b)
	benchType[float64](b)
	benchType[int32](b)
	benchType[int64](b)
	benchType[uint8](b)
	benchDiv(b, portable.build().divF32, current.build().divF32)
	benchDiv(b, portable.build().divF64, current.build().divF64)
}

// benchDiv measures Avg's division, dst[i] /= n, named
// Kernel/Div-<type>/<variant>/<size>: portable (divGo, the plain loop) and
// simd (DivFunc's).
func benchDiv[T float32 | float64](b *testing.B, portableDiv, simdDiv func([]T, T)) {
	variants := []struct {
		name string
		f    func([]T, T)
	}{{"portable", portableDiv}}
	if Implementation() != "portable" {
		variants = append(variants, struct {
			name string
			f    func([]T, T)
		}{"simd", simdDiv})
	}
	for _, v := range variants {
		for _, sz := range benchSizes {
			b.Run(fmt.Sprintf("Div-%s/%s/%s", TypeOf[T](), v.name, sz.name), func(b *testing.B) {
				dst, _ := benchBufs[T](sz.bytes, Sum)
				b.SetBytes(int64(sz.bytes))
				b.ResetTimer()
				// Dividing by 3 again and again would end in subnormals,
				// whose speed differs: every other call divides by 1/3.
				divisors := [2]T{3, 1.0 / 3}
				i := 0
				for b.Loop() {
					v.f(dst, divisors[i&1])
					i++
				}
			})
		}
	}
}

// BenchmarkConvert measures the conversions at 256 KiB of float32.
func BenchmarkConvert(b *testing.B) {
	const n = 64 << 10
	f := make([]float32, n)
	h := make([]uint16, n)
	r := rand.New(rand.NewPCG(6, 6))
	for i := range f {
		f[i] = float32(r.NormFloat64())
	}
	F32ToF16(h, f)
	for _, c := range []struct {
		name string
		run  func()
	}{
		{"F32ToBF16", func() { F32ToBF16(h, f) }},
		{"BF16ToF32", func() { BF16ToF32(f, h) }},
		{"F32ToF16", func() { F32ToF16(h, f) }},
		{"F16ToF32", func() { F16ToF32(f, h) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(4 * n) // bytes of float32
			for b.Loop() {
				c.run()
			}
		})
	}
}
