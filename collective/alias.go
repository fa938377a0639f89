package collective

import (
	"unsafe"

	"github.com/ringo-ml/ringo/internal/kernel"
)

func overlap[T Elem](a, b []T) bool {
	ab, bb := kernel.Bytes(a), kernel.Bytes(b)
	a0 := uintptr(unsafe.Pointer(unsafe.SliceData(ab)))
	b0 := uintptr(unsafe.Pointer(unsafe.SliceData(bb)))
	return a0 < b0+uintptr(len(bb)) && b0 < a0+uintptr(len(ab))
}
