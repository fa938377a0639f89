package codec

import (
	"unsafe"

	"github.com/ringo-ml/ringo/internal/kernel"
)

// EncodeF32 writes src as 16-bit floats of kind k (BF16 or FP16) into dst,
// which must hold exactly k.WireSize(len(src)) bytes, 2-byte aligned. Values
// round to nearest, ties to even; float16 overflows to ±Inf (see package
// kernel for the details).
func EncodeF32(k Kind, dst []byte, src []float32) {
	h := halves(dst)[:len(src)]
	if k == BF16 {
		kernel.F32ToBF16(h, src)
		return
	}
	kernel.F32ToF16(h, src)
}

// DecodeF32 reads the 16-bit floats of kind k in src into dst (exactly: every
// 16-bit value is a float32). len(src) must be k.WireSize(len(dst)).
func DecodeF32(k Kind, dst []float32, src []byte) {
	h := halves(src)[:len(dst)]
	if k == BF16 {
		kernel.BF16ToF32(dst, h)
		return
	}
	kernel.F16ToF32(dst, h)
}

// RoundF32 replaces every value of v by what it becomes after a trip through
// the wire: DecodeF32(EncodeF32(v)). scratch must hold k.WireSize(len(v))
// bytes.
func RoundF32(k Kind, v []float32, scratch []byte) {
	EncodeF32(k, scratch, v)
	DecodeF32(k, v, scratch)
}

// halves views b (2-byte aligned) as 16-bit words.
func halves(b []byte) []uint16 {
	if len(b) < 2 {
		return nil
	}
	return unsafe.Slice((*uint16)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/2)
}
