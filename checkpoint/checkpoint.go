// Package checkpoint stores named float32 tensors and a little metadata
// (step, epoch, RNG state, user key/values) in one self-checking file.
//
// Layout (version 1, every integer little-endian; a string is a uint32 byte
// length and its UTF-8 bytes):
//
//	offset  size  field
//	0       8     magic "RINGOCKP"
//	8       4     version, uint32 = 1
//	12      4     header length H, uint32
//	16      H     header:
//	                step int64, epoch int64
//	                RNG state: uint32 length, bytes
//	                metadata: uint32 count, then count (key string, value string) pairs, keys sorted
//	                tensors: uint32 count, then per tensor, in file order:
//	                  name string (unique in the file)
//	                  dtype uint8 (1 = float32)
//	                  ndim uint8 (at most 8), then ndim uint64 dimensions:
//	                    the shape of the WHOLE tensor
//	                  offset uint64: index, in the whole tensor flattened
//	                    row-major, of the first element stored here
//	                  count uint64: elements stored here
//	                  crc uint32: CRC-32C of this tensor's data bytes
//	16+H    4     CRC-32C (Castagnoli) of bytes [0, 16+H)
//	20+H          data: each tensor's count elements, in file order, back to
//	              back (float32: 4 bytes each, IEEE 754 little-endian)
//
// The file ends exactly after the last tensor's data. A tensor stored whole
// has offset 0 and count = the product of its shape; a slice of a bigger
// tensor (a shard, for sharded checkpoints) has the whole tensor's shape
// and the range [offset, offset+count) it holds. Any truncation, trailing
// bytes or flipped bit is refused with an error matching ErrCorrupt that
// says what was wrong; a newer version is refused with ErrVersion.
//
// Save writes atomically: a temporary file in the same directory, synced,
// renamed over the target, and the directory synced. A crash during Save
// leaves the previous checkpoint in place.
package checkpoint

import (
	"errors"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrCorrupt: the bytes are not a whole, intact checkpoint.
	ErrCorrupt = errors.New("checkpoint: corrupt or truncated")
	// ErrVersion: a checkpoint of a format version this code cannot read.
	ErrVersion = errors.New("checkpoint: unsupported format version")
	// ErrInvalid: a Checkpoint that cannot be written, or a tensor asked
	// for that is not there or has another size.
	ErrInvalid = errors.New("checkpoint: invalid")
)

// Tensor is one named float32 tensor, or a slice of one.
type Tensor struct {
	Name string
	// Shape is the shape of the whole tensor; nil means one dimension of
	// len(Data) (with Offset 0).
	Shape []int
	// Offset is the index, in the whole tensor flattened row-major, of
	// Data[0]: zero for a tensor stored whole.
	Offset int
	Data   []float32
}

// Checkpoint is what a checkpoint file holds.
type Checkpoint struct {
	Step, Epoch int64
	// RNG is the state of the caller's random number generators, opaque
	// here (e.g. a math/rand/v2 PCG's MarshalBinary).
	RNG []byte
	// Meta holds the caller's key/values (flags, a model name, a git hash).
	Meta    map[string]string
	Tensors []Tensor
}
