//go:build !purego

#include "textflag.h"

// func cpuidF16C() bool
TEXT ·cpuidF16C(SB), NOSPLIT, $0-1
	MOVL $1, AX
	XORL CX, CX
	CPUID
	SHRL $29, CX
	ANDL $1, CX
	MOVB CX, ret+0(FP)
	RET

// The conversions below process len(dst) rounded down to a multiple of 8
// elements; the Go wrappers do the rest. len(src) >= len(dst).

// func f32ToBF16AVX2(dst []uint16, src []float32)
// Round to nearest even in integer lanes: (u + 0x7fff + (u>>16 & 1)) >> 16,
// and for NaN lanes (u >> 16) | 0x40, so a NaN stays a NaN.
TEXT ·f32ToBF16AVX2(SB), NOSPLIT, $0-48
	MOVQ dst_base+0(FP), DI
	MOVQ dst_len+8(FP), CX
	MOVQ src_base+24(FP), SI
	SHRQ $3, CX
	JZ   bf16done
	MOVQ $0x0000000100000001, AX
	VMOVQ AX, X15
	VPBROADCASTQ X15, Y15
	MOVQ $0x00007fff00007fff, AX
	VMOVQ AX, X14
	VPBROADCASTQ X14, Y14
	MOVQ $0x0000004000000040, AX
	VMOVQ AX, X13
	VPBROADCASTQ X13, Y13

bf16loop:
	VMOVDQU (SI), Y0
	VPSRLD $16, Y0, Y1
	VPAND Y15, Y1, Y2
	VPADDD Y14, Y0, Y3
	VPADDD Y2, Y3, Y3
	VPSRLD $16, Y3, Y3
	VPOR Y13, Y1, Y1
	VCMPPS $3, Y0, Y0, Y2
	VBLENDVPS Y2, Y1, Y3, Y3
	VEXTRACTI128 $1, Y3, X4
	VPACKUSDW X4, X3, X3
	VMOVDQU X3, (DI)
	ADDQ $32, SI
	ADDQ $16, DI
	DECQ CX
	JNZ  bf16loop

bf16done:
	VZEROUPPER
	RET

// func bf16ToF32AVX2(dst []float32, src []uint16)
TEXT ·bf16ToF32AVX2(SB), NOSPLIT, $0-48
	MOVQ dst_base+0(FP), DI
	MOVQ dst_len+8(FP), CX
	MOVQ src_base+24(FP), SI
	SHRQ $3, CX
	JZ   wdone

wloop:
	VPMOVZXWD (SI), Y0
	VPSLLD $16, Y0, Y0
	VMOVDQU Y0, (DI)
	ADDQ $16, SI
	ADDQ $32, DI
	DECQ CX
	JNZ  wloop

wdone:
	VZEROUPPER
	RET

// func f32ToF16F16C(dst []uint16, src []float32)
TEXT ·f32ToF16F16C(SB), NOSPLIT, $0-48
	MOVQ dst_base+0(FP), DI
	MOVQ dst_len+8(FP), CX
	MOVQ src_base+24(FP), SI
	SHRQ $3, CX
	JZ   hdone

hloop:
	VMOVUPS (SI), Y0
	VCVTPS2PH $0, Y0, X1 // imm 0: round to nearest even
	VMOVDQU X1, (DI)
	ADDQ $32, SI
	ADDQ $16, DI
	DECQ CX
	JNZ  hloop

hdone:
	VZEROUPPER
	RET

// func f16ToF32F16C(dst []float32, src []uint16)
TEXT ·f16ToF32F16C(SB), NOSPLIT, $0-48
	MOVQ dst_base+0(FP), DI
	MOVQ dst_len+8(FP), CX
	MOVQ src_base+24(FP), SI
	SHRQ $3, CX
	JZ   fdone

floop:
	VCVTPH2PS (SI), Y0
	VMOVUPS Y0, (DI)
	ADDQ $16, SI
	ADDQ $32, DI
	DECQ CX
	JNZ  floop

fdone:
	VZEROUPPER
	RET
