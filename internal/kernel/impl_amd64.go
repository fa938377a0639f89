//go:build !purego

package kernel

import "golang.org/x/sys/cpu"

//go:generate go run ./asmgen

// hasAVX512 requires the subsets the AVX-512 kernels use: F (floats, 32- and
// 64-bit integers, VPTERNLOG), BW (bytes and words), DQ (VPMULLQ), VL.
var (
	hasAVX2   = cpu.X86.HasAVX2
	hasAVX512 = hasAVX2 && cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512DQ && cpu.X86.HasAVX512VL
	hasF16C   = hasAVX2 && cpuidF16C()
)

// cpuidF16C reports CPUID.1:ECX.F16C[bit 29] (x/sys/cpu at the version this
// module uses has no flag for it).
func cpuidF16C() bool

func archImpls() []impl {
	var out []impl
	if hasAVX512 {
		// No machine this was built on had AVX-512: see impl.untested.
		out = append(out, impl{name: "avx512", fill: fillAVX512, conv: avx2Converters(), untested: true})
	}
	if hasAVX2 {
		out = append(out, impl{name: "avx2", fill: fillAVX2, conv: avx2Converters()})
	}
	return out
}
