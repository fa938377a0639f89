package collective

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestMismatchedCompressionFailsEveryRank: ranks configured with different
// codecs fail their AllReduce with ErrMismatch naming both, instead of
// decoding each other's bytes as garbage.
func TestMismatchedCompressionFailsEveryRank(t *testing.T) {
	for _, tc := range []struct{ odd, rest string }{
		{"bf16", ""}, {"s2", "zstd"}, {"fp16", "bf16"}, {"none", "s2"},
	} {
		for _, n := range []int{2, 3, 5} {
			t.Run(fmt.Sprintf("%s-vs-%s/n=%d", tc.odd, tc.rest, n), func(t *testing.T) {
				comms, err := LocalConfig(n, Config{Algorithm: "ring", Compression: tc.rest, Timeout: 30 * time.Second})
				require.NoError(t, err)
				defer func() {
					for _, c := range comms {
						_ = c.Close()
					}
				}()
				comms[n-1].codec, err = parseCompression("test", tc.odd) // set before any call: no call runs
				require.NoError(t, err)
				errs := make([]error, n)
				var wg sync.WaitGroup
				for r, c := range comms {
					wg.Add(1)
					go func() {
						defer wg.Done()
						errs[r] = AllReduce(context.Background(), c, make([]float32, 1000), Sum)
					}()
				}
				wg.Wait()
				for r, err := range errs {
					require.ErrorIs(t, err, ErrMismatch, "rank %d", r)
					require.ErrorIs(t, err, ErrAborted, "rank %d", r)
				}
				odd := "compression=" + tc.odd
				if tc.odd == "none" {
					odd = "compression=" + tc.rest
				}
				require.Contains(t, errs[0].Error(), odd)
			})
		}
	}
}

func TestDescribeNamesTheCodec(t *testing.T) {
	sig := signature[float32](kindAllReduce, Sum, 12, 3)
	sig.Op |= uint8(algoRing) << 4
	require.Equal(t, "AllReduce(float32, count=12, Sum, ring, compression=bf16)", describe(sig))
	sig.Root = 0
	require.Equal(t, "AllReduce(float32, count=12, Sum, ring)", describe(sig))
}
