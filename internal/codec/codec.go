// Package codec turns segments of a collective's vector into wire bytes and
// back, for compressed collectives.
//
// There are two families. Lossless codecs (S2, zstd) work on any element
// type: a segment goes out compressed only when that pays, and otherwise raw,
// its header frame saying which (see Header). Lossy codecs (bfloat16,
// float16) are for float32 vectors only: every value goes out as 16 bits,
// rounded to nearest even, and comes back as the float32 it rounds to; a
// receiver accumulates in float32, as PyTorch DDP's bf16/fp16 communication
// hooks and Horovod's fp16 compression do.
//
// A Codec holds the state that is expensive to make (zstd's encoder and
// decoder) and the back-off state of its sender; make one per ring and reuse
// it for every call. Its methods must not run concurrently.
package codec

import (
	"errors"
	"fmt"
)

// Kind names a codec. Its value travels in a collective's signature, so that
// ranks configured with different codecs fail with a mismatch.
type Kind uint8

// The codecs. None is the uncompressed wire.
const (
	None Kind = iota
	S2
	Zstd
	BF16
	FP16
	numKinds
)

var kindNames = [...]string{"none", "s2", "zstd", "bf16", "fp16"}

func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("codec(%d)", uint8(k))
}

// ErrUnknown: the name or number of a codec that does not exist.
var ErrUnknown = errors.New("unknown compression")

// ErrCorrupt: wire bytes that do not decode to the segment expected.
var ErrCorrupt = errors.New("corrupt compressed segment")

// Parse reads a codec name: "" and "none" are None.
func Parse(s string) (Kind, error) {
	switch s {
	case "", "none", "off":
		return None, nil
	case "s2", "snappy":
		return S2, nil
	case "zstd":
		return Zstd, nil
	case "bf16", "bfloat16":
		return BF16, nil
	case "fp16", "f16", "float16", "half":
		return FP16, nil
	}
	return None, fmt.Errorf("%w %q (want none, s2, zstd, bf16 or fp16)", ErrUnknown, s)
}

// Valid reports whether k names a codec.
func (k Kind) Valid() bool { return k < numKinds }

// Lossy reports whether the codec rounds values (bf16, fp16). Lossy codecs
// are defined for float32 only.
func (k Kind) Lossy() bool { return k == BF16 || k == FP16 }

// Lossless reports whether the codec compresses bytes exactly (s2, zstd).
func (k Kind) Lossless() bool { return k == S2 || k == Zstd }

// WireSize is the size on the wire of n float32 values under a lossy codec
// (its payload length is fixed by the element count).
func (k Kind) WireSize(n int) int { return 2 * n }
