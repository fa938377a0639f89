package collective

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Many async calls in flight at once start as many helpers; once they are
// done at most maxIdleHelpers stay, idle; Close ends every one of them
// before it returns; and a call issued after Close fails with ErrClosed
// (on a goroutine of its own, which ends with it).
func TestAsyncHelpersAreBoundedAndEndWithClose(t *testing.T) {
	const n, inFlight = 3, 3 * maxIdleHelpers
	comms, err := LocalConfig(n, Config{Timeout: 30 * time.Second})
	require.NoError(t, err)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var works []*Work
			for i := range inFlight {
				works = append(works, AllReduceAsync(ctx, c, []int64{int64(r + i)}, Sum))
			}
			for _, w := range works {
				if err := w.Wait(); err != nil && errs[r] == nil {
					errs[r] = err
				}
			}
		}()
	}
	wg.Wait()
	for r, err := range errs {
		require.NoError(t, err, "rank %d", r)
	}
	for r, c := range comms {
		h := &c.helpers
		require.Eventually(t, func() bool { // finished helpers park or end
			h.mu.Lock()
			defer h.mu.Unlock()
			return h.live == len(h.idle)
		}, 30*time.Second, time.Millisecond, "rank %d", r)
		h.mu.Lock()
		require.LessOrEqual(t, len(h.idle), maxIdleHelpers, "rank %d", r)
		require.Positive(t, len(h.idle), "rank %d", r)
		h.mu.Unlock()
	}
	var closing sync.WaitGroup
	for _, c := range comms {
		closing.Add(1)
		go func() { defer closing.Done(); c.Close() }()
	}
	closing.Wait()
	for r, c := range comms {
		h := &c.helpers
		h.mu.Lock()
		require.Zero(t, h.live, "rank %d: helpers outlive Close", r)
		require.Empty(t, h.idle, "rank %d", r)
		h.mu.Unlock()
		late := BarrierAsync(ctx, c)
		require.ErrorIs(t, late.Wait(), ErrClosed, "rank %d", r)
		<-late.Done()
	}
}
