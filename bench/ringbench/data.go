package main

import (
	"fmt"
	"io"
	"math"
	"math/rand/v2"

	"github.com/ringo-ml/ringo/collective"
)

// pattern fills the AllReduce buffer with the values of -data for the timed
// calls. Zeros (the default) suit uncompressed timing, but a codec would
// squeeze them to nothing: compression is measured on values like real
// gradients.
//
//   - random: floats normal(0, 1e-3) (integers uniform in ±100), different
//     on every rank; incompressible bytes for S2 and zstd.
//   - sparse90: the same, but 90% of the elements are zero, the same
//     positions on every rank, so that the sums stay 90% zeros too
//     (scattered zeros: the hard case for S2, which then encodes at a few
//     hundred MB/s);
//   - noise: uniformly random bits for integers (incompressible: use -d
//     uint32 -r sum, which keeps them uniform), uniform in [-1, 1) for
//     floats;
//   - rows90: 90% of the rows of 256 elements are zero (an embedding
//     table's untouched rows), the same rows on every rank.
//
// Timed calls reduce in place, so with Sum the values grow by Size each
// call: use -r avg (DDP's reduction), which keeps them where they are.
func (b *bench[T]) pattern() {
	rng := rand.New(rand.NewPCG(uint64(b.c.Rank()), 1))
	mask := rand.New(rand.NewPCG(0x5eed, 2)) // the same on every rank
	float := isFloat[T]()
	zeroRow := false
	for i := range b.send {
		var v T
		switch {
		case b.o.data == "noise" && float:
			v = T(2*rng.Float64() - 1)
		case b.o.data == "noise":
			v = T(rng.Uint64())
		case float:
			v = T(rng.NormFloat64() * 1e-3)
		default:
			v = T(rng.IntN(201)) - T(100)
		}
		switch b.o.data {
		case "sparse90":
			if mask.IntN(10) != 0 {
				v = 0
			}
		case "rows90":
			if i%256 == 0 {
				zeroRow = mask.IntN(10) != 0
			}
			if zeroRow {
				v = 0
			}
		}
		b.send[i] = v
	}
}

// reportCompression writes what c's AllReduce encoder did over the sweep (if
// it compressed).
func reportCompression(c *collective.Comm, w io.Writer) {
	st, ok := c.CompressionStats()
	if !ok {
		return
	}
	if st.RawBytes == 0 {
		fmt.Fprintf(w, "# compression: lossy, 2 bytes per float32 on the wire\n")
		return
	}
	fmt.Fprintf(w, "# compression (rank 0's encoder, whole sweep): wire/raw = %.3f; segments tried %d, compressed %d, skipped by back-off %d\n",
		float64(st.WireBytes)/float64(st.RawBytes), st.Tried, st.Compressed, st.Skipped)
}

// lossyTolerance is the relative error the check allows an AllReduce whose
// values crossed the wire as bf16 or fp16 (float32 Sum and Avg; the check's
// small integers and their sums are exact in both, an Avg's quotient is
// rounded once more): 0 when the result must be exact.
func (b *bench[T]) lossyTolerance() float64 {
	var z T
	if _, ok := any(z).(float32); !ok || b.op != collective.Sum && b.op != collective.Avg {
		return 0
	}
	switch b.o.compression {
	case "bf16":
		return 0x1p-8
	case "fp16":
		return 0x1p-11
	}
	return 0
}

// within reports whether got is want to within rel of |want|.
func within[T collective.Elem](got, want T, rel float64) bool {
	return math.Abs(float64(got)-float64(want)) <= rel*math.Abs(float64(want))
}
