// Package kernel holds the element-wise reductions that every reducing
// collective runs in its hot loop, behind one small interface: a Kernel per
// (element type, operation), looked up once per call.
//
// The functions here are portable Go, unrolled and with bounds checks hoisted.
// Faster per-architecture versions can replace entries of the tables without
// changing any caller.
//
// Float semantics: Sum and Prod follow IEEE 754 (NaN propagates). Min and Max
// follow Go's built-in min and max: if either operand is NaN the result is NaN,
// and -0 orders below +0.
package kernel

import "unsafe"

// Elem is the set of element types the collectives move and reduce.
type Elem interface {
	int8 | uint8 | int32 | uint32 | int64 | uint64 | float32 | float64
}

// Op is an element-wise, associative and commutative reduction.
type Op uint8

// The reductions. Avg is not a kernel: collectives compute it as Sum followed
// by Div on the rank that owns the final value.
const (
	Sum Op = iota
	Prod
	Min
	Max
	numOps
)

func (o Op) String() string {
	switch o {
	case Sum:
		return "Sum"
	case Prod:
		return "Prod"
	case Min:
		return "Min"
	case Max:
		return "Max"
	}
	return "Op(?)"
}

// Kernel is the pair of reduction forms for one element type and op.
type Kernel[T Elem] struct {
	// Reduce sets dst[i] = op(dst[i], src[i]) for i < len(dst); len(src) >= len(dst).
	Reduce func(dst, src []T)
	// ReduceTo sets dst[i] = op(a[i], b[i]) for i < len(dst); a and b are at least as long.
	// dst may alias a or b exactly.
	ReduceTo func(dst, a, b []T)
}

// DType names an element type on the wire.
type DType uint8

// Element type codes. Zero is reserved for "no payload".
const (
	Int8 DType = iota + 1
	Uint8
	Int32
	Uint32
	Int64
	Uint64
	Float32
	Float64
)

var dtypeNames = [...]string{"none", "int8", "uint8", "int32", "uint32", "int64", "uint64", "float32", "float64"}

func (d DType) String() string {
	if int(d) < len(dtypeNames) {
		return dtypeNames[d]
	}
	return "dtype(?)"
}

// TypeOf returns the wire code of T.
func TypeOf[T Elem]() DType {
	switch any((*T)(nil)).(type) {
	case *int8:
		return Int8
	case *uint8:
		return Uint8
	case *int32:
		return Int32
	case *uint32:
		return Uint32
	case *int64:
		return Int64
	case *uint64:
		return Uint64
	case *float32:
		return Float32
	default:
		return Float64
	}
}

// IsFloat reports whether T is a floating-point type.
func IsFloat[T Elem]() bool {
	d := TypeOf[T]()
	return d == Float32 || d == Float64
}

// Size is the size of one T in bytes.
func Size[T Elem]() int {
	var zero T
	return int(unsafe.Sizeof(zero))
}

// Bytes views s as its raw bytes (host byte order), without copying.
func Bytes[T Elem](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s)*Size[T]())
}

// FromBytes views b as a []T. b must be aligned for T and a multiple of its size.
func FromBytes[T Elem](b []byte) []T {
	n := len(b) / Size[T]()
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(b))), n)
}

// For returns the kernel for T and op. ok is false for an unknown op.
func For[T Elem](op Op) (k *Kernel[T], ok bool) {
	if op >= numOps {
		return nil, false
	}
	var table any
	switch any((*T)(nil)).(type) {
	case *int8:
		table = &int8Kernels
	case *uint8:
		table = &uint8Kernels
	case *int32:
		table = &int32Kernels
	case *uint32:
		table = &uint32Kernels
	case *int64:
		table = &int64Kernels
	case *uint64:
		table = &uint64Kernels
	case *float32:
		table = &float32Kernels
	default:
		table = &float64Kernels
	}
	return &table.(*[numOps]Kernel[T])[op], true
}

// DivFunc returns the function that divides every element by n, the last step of
// Avg; nil for integer types, where Avg is not defined.
func DivFunc[T Elem]() func(dst []T, n int) {
	var f any
	switch any((*T)(nil)).(type) {
	case *float32:
		f = divFloat32
	case *float64:
		f = divFloat64
	default:
		return nil
	}
	return f.(func([]T, int))
}

var (
	int8Kernels    = table[int8]()
	uint8Kernels   = table[uint8]()
	int32Kernels   = table[int32]()
	uint32Kernels  = table[uint32]()
	int64Kernels   = table[int64]()
	uint64Kernels  = table[uint64]()
	float32Kernels = table[float32]()
	float64Kernels = table[float64]()
)

func table[T Elem]() [numOps]Kernel[T] {
	return [numOps]Kernel[T]{
		Sum:  {Reduce: sumGo[T], ReduceTo: sumToGo[T]},
		Prod: {Reduce: prodGo[T], ReduceTo: prodToGo[T]},
		Min:  {Reduce: minGo[T], ReduceTo: minToGo[T]},
		Max:  {Reduce: maxGo[T], ReduceTo: maxToGo[T]},
	}
}

func divFloat32(dst []float32, n int) { divGo(dst, float32(n)) }
func divFloat64(dst []float64, n int) { divGo(dst, float64(n)) }

func divGo[T float32 | float64](dst []T, n T) {
	// Division, not multiplication by 1/n: it is what users compare against.
	for i := range dst {
		dst[i] /= n
	}
}
