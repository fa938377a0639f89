package collective

import (
	"fmt"

	"github.com/ringo-ml/ringo/internal/codec"
	"github.com/ringo-ml/ringo/link"
	"github.com/ringo-ml/ringo/ring"
)

// parseCompression reads a compression name (Config.Compression or
// RINGO_COMPRESSION, which name names in the error).
func parseCompression(name, s string) (codec.Kind, error) {
	k, err := codec.Parse(normalName(s))
	if err != nil {
		return codec.None, fmt.Errorf("%w: %s: %w", ErrInvalid, name, err)
	}
	return k, nil
}

// allReduceCodec is the codec an AllReduce of T with op runs with, and the
// algorithm it then runs, given the algorithm chosen by size. The
// communicator's compression applies to bandwidth-bound calls: those of the
// ring algorithms, and those the cost model gave to Rabenseifner's (whose
// bytes on the wire equal the ring's), which then go by the compressed ring.
// Latency-bound calls (recursive doubling) and an algorithm forced by
// Config.Algorithm other than a ring stay uncompressed, and so does a call
// of another type or op than float32 Sum or Avg under a lossy codec (see
// Config.Compression).
func allReduceCodec[T Elem](c *Comm, algo algorithm, op Op) (algorithm, codec.Kind) {
	return allReduceCodecOf[T](c, c.codec, algo, op)
}

// allReduceCompressed runs the compressed ring (begin has been called).
func allReduceCompressed[T Elem](c *Comm, k codec.Kind, buf []T, red link.Reducer[T]) error {
	z, err := compressedRing(c, k)
	if err != nil {
		return err
	}
	return ring.AllReduceCompressed(z, buf, red)
}

// compressedRing returns c's compressed ring (its codec state and buffers:
// a zstd encoder is expensive to make), made on the first compressed call.
func compressedRing(c *Comm, k codec.Kind) (*ring.Compressed, error) {
	if c.compressed != nil {
		return c.compressed, nil
	}
	z, err := ring.NewCompressed(c.ring, ring.Codec(k))
	if err != nil {
		return nil, fmt.Errorf("ringo: compression %v: %w", k, err)
	}
	c.compressed = z
	return z, nil
}

// CompressionStats counts what a communicator's AllReduce encoder did.
type CompressionStats struct {
	// Segments tried with the codec, sent compressed, and sent raw without
	// a try (the back-off after incompressible ones). A lossy codec counts
	// none of them.
	Tried, Compressed, Skipped int
	// RawBytes were encoded into WireBytes (lossless codecs).
	RawBytes, WireBytes int64
}

// CompressionStats returns what c's AllReduce encoder did since the last
// CompressionStats, and resets the counters; ok is false if c has not
// compressed yet. It must not run during a call on c.
func (c *Comm) CompressionStats() (st CompressionStats, ok bool) {
	z := c.compressed
	if z == nil {
		return st, false
	}
	s := z.Stats()
	z.ResetStats()
	return CompressionStats{Tried: s.Tried, Compressed: s.Compressed, Skipped: s.Skipped, RawBytes: s.RawBytes, WireBytes: s.WireBytes}, true
}
