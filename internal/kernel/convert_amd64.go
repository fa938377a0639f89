//go:build !purego

package kernel

//go:noescape
func f32ToBF16AVX2(dst []uint16, src []float32)

//go:noescape
func bf16ToF32AVX2(dst []float32, src []uint16)

//go:noescape
func f32ToF16F16C(dst []uint16, src []float32)

//go:noescape
func f16ToF32F16C(dst []float32, src []uint16)

// avx2Converters returns the conversions for a CPU with AVX2 (and F16C, if
// hasF16C): the assembly takes whole groups of 8 and the portable code the
// tail, with the same results.
func avx2Converters() *converters {
	c := portableConverters
	c.f32ToBF16 = func(dst []uint16, src []float32) {
		src = src[:len(dst)]
		n := len(dst) &^ 7
		f32ToBF16AVX2(dst[:n], src[:n])
		f32ToBF16Go(dst[n:], src[n:])
	}
	c.bf16ToF32 = func(dst []float32, src []uint16) {
		src = src[:len(dst)]
		n := len(dst) &^ 7
		bf16ToF32AVX2(dst[:n], src[:n])
		bf16ToF32Go(dst[n:], src[n:])
	}
	if hasF16C {
		c.f32ToF16 = func(dst []uint16, src []float32) {
			src = src[:len(dst)]
			n := len(dst) &^ 7
			f32ToF16F16C(dst[:n], src[:n])
			f32ToF16Go(dst[n:], src[n:])
		}
		c.f16ToF32 = func(dst []float32, src []uint16) {
			src = src[:len(dst)]
			n := len(dst) &^ 7
			f16ToF32F16C(dst[:n], src[:n])
			f16ToF32Go(dst[n:], src[n:])
		}
	}
	return &c
}
