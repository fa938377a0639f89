package ring

import (
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/link"
)

// The reducers of the usual operations, for the schedules of this package
// (and any other that takes a link.Reducer). Each reduces with the fastest
// kernel this CPU runs (AVX2 or AVX-512 on amd64 where present, unrolled Go
// elsewhere), and every kernel gives the same bits as the others.
//
// Floats follow IEEE 754 for Sum and Prod (NaN propagates) and Go's built-in
// min and max for Min and Max: a NaN operand gives NaN, and -0 orders below
// +0. Integers wrap around on overflow.

// Sum is the element-wise sum.
func Sum[T link.Elem]() link.Reducer[T] { return reducerOf[T](kernel.Sum) }

// Prod is the element-wise product.
func Prod[T link.Elem]() link.Reducer[T] { return reducerOf[T](kernel.Prod) }

// Min is the element-wise minimum.
func Min[T link.Elem]() link.Reducer[T] { return reducerOf[T](kernel.Min) }

// Max is the element-wise maximum.
func Max[T link.Elem]() link.Reducer[T] { return reducerOf[T](kernel.Max) }

// Avg is the element-wise mean over the ranks: the sum, divided by the
// number of ranks once, on the rank that completes each element.
func Avg[T link.Float]() link.Reducer[T] {
	red := reducerOf[T](kernel.Sum)
	red.Div = kernel.DivFunc[T]()
	return red
}

func reducerOf[T link.Elem](op kernel.Op) link.Reducer[T] {
	k, _ := kernel.For[T](op) // op is one of the kernel's own
	return link.Reducer[T]{ReduceTo: k.ReduceTo}
}
