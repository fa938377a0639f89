package kernel

// tables is one complete set of kernels: a table per element type.
type tables struct {
	i8  [numOps]Kernel[int8]
	u8  [numOps]Kernel[uint8]
	i32 [numOps]Kernel[int32]
	u32 [numOps]Kernel[uint32]
	i64 [numOps]Kernel[int64]
	u64 [numOps]Kernel[uint64]
	f32 [numOps]Kernel[float32]
	f64 [numOps]Kernel[float64]
	// divF32 and divF64 set dst[i] /= n: the last step of Avg.
	divF32 func(dst []float32, n float32)
	divF64 func(dst []float64, n float64)
}

func portableTables() tables {
	return tables{
		i8:  table[int8](),
		u8:  table[uint8](),
		i32: table[int32](),
		u32: table[uint32](),
		i64: table[int64](),
		u64: table[uint64](),
		f32: table[float32](),
		f64: table[float64](),

		divF32: divGo[float32],
		divF64: divGo[float64],
	}
}

// impl is one implementation of the kernels: fill replaces the entries of a
// portable set that it accelerates and leaves the others alone.
type impl struct {
	name string
	fill func(*tables)
	// conv installs its conversion kernels (nil: portable conversions).
	conv *converters
}

// build returns the full set of kernels of i.
func (i impl) build() tables {
	t := portableTables()
	if i.fill != nil {
		i.fill(&t)
	}
	return t
}

var portable = impl{name: "portable"}

// candidate is an implementation this architecture has, and what the CPU
// lacks to run it ("" when it can).
type candidate struct {
	impl
	missing string
}

// candidates lists every implementation of this architecture, best first,
// the portable one last. archCandidates comes from the per-architecture
// files.
func candidates() []candidate { return append(archCandidates(), candidate{impl: portable}) }

// impls lists the implementations this CPU can run, best first; the portable
// one is always last.
func impls() []impl {
	var out []impl
	for _, c := range candidates() {
		if c.missing == "" {
			out = append(out, c.impl)
		}
	}
	return out
}

// current serves every call: the best implementation the CPU runs.
var current = impls()[0]

func init() { install(current) }

func install(i impl) {
	t := i.build()
	int8Kernels, uint8Kernels = t.i8, t.u8
	int32Kernels, uint32Kernels = t.i32, t.u32
	int64Kernels, uint64Kernels = t.i64, t.u64
	float32Kernels, float64Kernels = t.f32, t.f64
	float32Div, float64Div = t.divF32, t.divF64
	conv = portableConverters
	if i.conv != nil {
		conv = *i.conv
	}
}

// Implementation names the kernels in use: "avx512", "avx2" or "portable".
func Implementation() string { return current.name }

// asmKernel wraps an assembly ReduceTo (which trusts its lengths) into both
// forms, with the length checks the portable kernels make: a source shorter
// than dst panics before any element is touched.
func asmKernel[T Elem](f func(dst, a, b []T)) Kernel[T] {
	return Kernel[T]{
		Reduce: func(dst, src []T) {
			src = src[:len(dst)]
			f(dst, dst, src)
		},
		ReduceTo: func(dst, a, b []T) {
			a, b = a[:len(dst)], b[:len(dst)]
			f(dst, a, b)
		},
	}
}
