package kernel

import "math"

// Conversions between float32 and the 16-bit float formats, for compressing
// gradients on the wire. Like the kernels, each converts the first len(dst)
// elements of src and panics if src is shorter; dst and src do not overlap.
//
// float32 -> 16 bits rounds to nearest, ties to even; values too large for the
// format become ±Inf, ±Inf stays ±Inf, and a NaN stays a NaN (made quiet, its
// sign and the high bits of its payload kept). float16 subnormals are produced
// and read exactly. 16 bits -> float32 is exact (a float16 NaN becomes a quiet
// float32 NaN; a bfloat16 is the high half of a float32, and is widened as such).
// Every implementation gives bitwise-equal results.

// F32ToBF16 sets dst[i] to src[i] rounded to bfloat16.
func F32ToBF16(dst []uint16, src []float32) { conv.f32ToBF16(dst, src[:len(dst)]) }

// BF16ToF32 sets dst[i] to the bfloat16 src[i] as a float32.
func BF16ToF32(dst []float32, src []uint16) { conv.bf16ToF32(dst, src[:len(dst)]) }

// F32ToF16 sets dst[i] to src[i] rounded to IEEE 754 binary16.
func F32ToF16(dst []uint16, src []float32) { conv.f32ToF16(dst, src[:len(dst)]) }

// F16ToF32 sets dst[i] to the binary16 src[i] as a float32.
func F16ToF32(dst []float32, src []uint16) { conv.f16ToF32(dst, src[:len(dst)]) }

// converters is one implementation of the conversions. Its functions may
// assume len(src) == len(dst).
type converters struct {
	f32ToBF16 func(dst []uint16, src []float32)
	bf16ToF32 func(dst []float32, src []uint16)
	f32ToF16  func(dst []uint16, src []float32)
	f16ToF32  func(dst []float32, src []uint16)
}

var portableConverters = converters{
	f32ToBF16: f32ToBF16Go,
	bf16ToF32: bf16ToF32Go,
	f32ToF16:  f32ToF16Go,
	f16ToF32:  f16ToF32Go,
}

var conv = portableConverters

func f32ToBF16Go(dst []uint16, src []float32) {
	src = src[:len(dst)]
	for i, f := range src {
		dst[i] = f32ToBF16(f)
	}
}

func bf16ToF32Go(dst []float32, src []uint16) {
	src = src[:len(dst)]
	for i, h := range src {
		dst[i] = math.Float32frombits(uint32(h) << 16)
	}
}

func f32ToF16Go(dst []uint16, src []float32) {
	src = src[:len(dst)]
	for i, f := range src {
		dst[i] = f32ToF16(f)
	}
}

func f16ToF32Go(dst []float32, src []uint16) {
	src = src[:len(dst)]
	for i, h := range src {
		dst[i] = f16ToF32(h)
	}
}

func f32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: truncate, and keep it a NaN by setting the quiet bit
		return uint16(b>>16) | 0x0040
	}
	// Round to nearest even on the low 16 bits; a carry into the exponent is
	// the right answer, up to +-Inf.
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

func f32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 { // NaN: quiet, high payload bits kept (as VCVTPS2PH does)
			return sign | 0x7e00 | uint16(mant>>13)
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15 // biased float16 exponent
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// float16 subnormal (or zero): shift the significand, with its
		// implicit bit, right by 13 + 1 - e and round.
		if e < -10 {
			return sign // below half the smallest subnormal (float32 subnormals too)
		}
		m := mant | 0x800000
		shift := uint(14 - e)
		q := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || rem == half && q&1 == 1 {
			q++ // may carry into the smallest normal: the encoding is still right
		}
		return sign | uint16(q)
	}
	q := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || rem == 0x1000 && q&1 == 1 {
		q++ // may carry into the exponent, up to +-Inf
	}
	return sign | uint16(q)
}

func f16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch exp {
	case 0x1f:
		if mant != 0 {
			return math.Float32frombits(sign | 0x7fc00000 | mant<<13)
		}
		return math.Float32frombits(sign | 0x7f800000)
	case 0:
		// Zero or subnormal: mant * 2^-24, exact in float32.
		return math.Float32frombits(sign | math.Float32bits(float32(mant)*0x1p-24))
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}
