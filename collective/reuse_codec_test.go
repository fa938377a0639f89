package collective_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// An AllReducer runs the call AllReduce runs for the same buffer: the same
// algorithm and the same codec, on one host and on two (where the cost
// model may pick the hierarchical AllReduce, which a compressed call
// trades for the compressed ring).
func TestAllReducerCompressesAsAllReduceDoes(t *testing.T) {
	for _, tr := range []string{"mem", "mixed"} {
		for _, count := range []int{1 << 10, 1 << 16, 1 << 20} {
			t.Run(fmt.Sprintf("%s/%d", tr, count), func(t *testing.T) {
				comms := formComms(t, tr, 4, collective.Config{Compression: "bf16"})
				last := func() string { st := comms[0].Status(); return st.Recent[len(st.Recent)-1].Call }
				requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
					return collective.AllReduce(ctx, c, make([]float32, count), collective.Avg)
				}))
				want := last()
				if count >= 1<<16 { // smaller ones go by recursive doubling, uncompressed
					require.Contains(t, want, "compression=bf16")
				}
				requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
					a, err := collective.NewAllReducer(c, make([]float32, count), collective.Avg, collective.AllReducerOptions{})
					if err != nil {
						return err
					}
					defer a.Close()
					if err := a.Start(ctx); err != nil {
						return err
					}
					return a.Wait(ctx)
				}))
				assert.Equal(t, want, last())
			})
		}
	}
}
