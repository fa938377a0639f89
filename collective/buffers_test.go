package collective_test

import (
	"context"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// The package documentation promises that a call only reads its send
// buffers; these are the calls that have one. Sizes cover the ring, the
// doubling algorithms and the pipelined paths.
func TestSendBuffersAreOnlyRead(t *testing.T) {
	const n = 4
	comms := local(t, n, tinyPipeline)
	for _, m := range []int{1, 7, 1000} {
		sends := make([][]float32, n)
		fill := func() {
			for r := range n {
				sends[r] = make([]float32, n*m)
				for i := range sends[r] {
					sends[r][i] = float32(r*100000 + i)
				}
			}
		}
		calls := map[string]func(r int, c *collective.Comm) error{
			"ReduceScatter": func(r int, c *collective.Comm) error {
				return collective.ReduceScatter(ctx, c, sends[r], make([]float32, m), collective.Sum)
			},
			"AllGather": func(r int, c *collective.Comm) error {
				return collective.AllGather(ctx, c, sends[r][:m], make([]float32, n*m))
			},
			"Reduce": func(r int, c *collective.Comm) error {
				return collective.Reduce(ctx, c, sends[r], make([]float32, n*m), collective.Max, 1)
			},
			"Gather": func(r int, c *collective.Comm) error {
				return collective.Gather(ctx, c, sends[r][:m], make([]float32, n*m), 2)
			},
			"Scatter": func(r int, c *collective.Comm) error {
				return collective.Scatter(ctx, c, sends[r], make([]float32, m), 3)
			},
			"AllToAll": func(r int, c *collective.Comm) error {
				return collective.AllToAll(ctx, c, sends[r], make([]float32, n*m))
			},
			"AllGatherV": func(r int, c *collective.Comm) error {
				counts := []int{m, 0, 2 * m, m}
				return collective.AllGatherV(ctx, c, sends[r][:counts[r]], counts, make([]float32, 4*m))
			},
			"AllToAllV": func(r int, c *collective.Comm) error {
				counts := []int{m, m, m, m}
				return collective.AllToAllV(ctx, c, sends[r], counts, make([]float32, n*m), counts)
			},
		}
		for name, call := range calls {
			fill()
			before := make([][]float32, n)
			for r := range n {
				before[r] = slices.Clone(sends[r])
			}
			requireAllOK(t, each(comms, call))
			for r := range n {
				assert.Equal(t, before[r], sends[r], "%s, m=%d: rank %d's send changed", name, m, r)
			}
		}
	}
}

// A call that fails before any data moves leaves its buffers as they were:
// arguments this rank can tell are wrong (ErrInvalid), a context done before
// the call, a closed communicator.
func TestBuffersAreUnchangedWhenNothingMoved(t *testing.T) {
	const n = 3
	want := func() []int32 { return []int32{1, 2, 3, 4, 5} }

	comms := local(t, n, collective.Config{})
	bufs := make([][]int32, n)
	errs := each(comms, func(r int, c *collective.Comm) error {
		bufs[r] = want()
		return collective.AllReduce(ctx, c, bufs[r], collective.Avg) // Avg is for floats
	})
	for r := range n {
		require.ErrorIs(t, errs[r], collective.ErrInvalid)
		assert.Equal(t, want(), bufs[r], "rank %d", r)
	}

	comms = local(t, n, collective.Config{})
	done, cancel := context.WithCancel(ctx)
	cancel()
	for r, c := range comms {
		buf := want()
		require.ErrorIs(t, collective.AllReduce(done, c, buf, collective.Sum), context.Canceled)
		assert.Equal(t, want(), buf, "rank %d", r)
	}

	comms = local(t, n, collective.Config{})
	closeAll(comms)
	for r, c := range comms {
		buf := want()
		require.ErrorIs(t, collective.Broadcast(ctx, c, buf, 0), collective.ErrClosed)
		assert.Equal(t, want(), buf, "rank %d", r)
	}
}
