package collective_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// Mixed async calls issued in one order on every rank complete with the
// right results, and a sync call issued after them runs after them.
func TestAsyncCallsRunInIssueOrder(t *testing.T) {
	const n, calls = 4, 24
	comms := local(t, n, tinyPipeline)
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		sums := make([][]int64, calls)
		bcasts := make([][]int32, calls)
		works := make([]*collective.Work, 0, 2*calls)
		for i := range calls {
			sums[i] = inputs[int64](r+i, 100+i, collective.Sum)
			works = append(works, collective.AllReduceAsync(ctx, c, sums[i], collective.Sum))
			bcasts[i] = make([]int32, 1+i%5)
			if r == i%n {
				for j := range bcasts[i] {
					bcasts[i][j] = int32(1000*i + j)
				}
			}
			works = append(works, collective.BroadcastAsync(ctx, c, bcasts[i], i%n))
		}
		// Issued after all of them: must not overtake them.
		if err := collective.Barrier(ctx, c); err != nil {
			return err
		}
		// The recorder shows the execution order: the issue order, the
		// Barrier last.
		st := c.Status()
		last := len(st.Recent) - 1
		if st.Recent[last].Call != "Barrier()" || st.Recent[last].Op != 2*calls+1 {
			return fmt.Errorf("rank %d: the Barrier ran as op #%d %s, want op #%d", r, st.Recent[last].Op, st.Recent[last].Call, 2*calls+1)
		}
		for k := last - 1; k >= 0; k-- {
			want := "AllReduce(int64"
			if (last-k)%2 == 1 {
				want = "Broadcast(int32"
			}
			if !strings.HasPrefix(st.Recent[k].Call, want) {
				return fmt.Errorf("rank %d: op #%d ran %s, want %s...", r, st.Recent[k].Op, st.Recent[k].Call, want)
			}
		}
		for _, w := range works {
			if err := w.Wait(); err != nil {
				return err
			}
		}
		for i := range calls {
			for j := range sums[i] {
				var want int64
				for q := range n {
					want += inputs[int64](q+i, 100+i, collective.Sum)[j]
				}
				if sums[i][j] != want {
					return fmt.Errorf("rank %d call %d: sum[%d] = %d, want %d", r, i, j, sums[i][j], want)
				}
			}
			for j, v := range bcasts[i] {
				if v != int32(1000*i+j) {
					return fmt.Errorf("rank %d call %d: broadcast[%d] = %d", r, i, j, v)
				}
			}
		}
		return nil
	}))
}

// Several goroutines of each rank issue calls in an agreed order (they pass
// a token), then wait for their own calls concurrently.
func TestAsyncCallsFromManyGoroutines(t *testing.T) {
	const n, goroutines, rounds = 3, 4, 6
	comms := local(t, n, collective.Config{})
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		tokens := make([]chan struct{}, goroutines)
		for g := range tokens {
			tokens[g] = make(chan struct{}, 1)
		}
		tokens[0] <- struct{}{}
		errs := make([]error, goroutines)
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var works []*collective.Work
				var bufs [][]float64
				for k := range rounds {
					<-tokens[g] // my turn to issue
					buf := inputs[float64](r+g, 50+k, collective.Sum)
					bufs = append(bufs, buf)
					works = append(works, collective.AllReduceAsync(ctx, c, buf, collective.Sum))
					tokens[(g+1)%goroutines] <- struct{}{}
				}
				for k, w := range works {
					if err := w.Wait(); err != nil {
						errs[g] = err
						return
					}
					for j, got := range bufs[k] {
						want := 0.0
						for q := range n {
							want += inputs[float64](q+g, 50+k, collective.Sum)[j]
						}
						if got != want {
							errs[g] = fmt.Errorf("goroutine %d round %d: [%d] = %v, want %v", g, k, j, got, want)
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	}))
}

func TestCloseWithAsyncCallsInFlight(t *testing.T) {
	comms := local(t, 2, collective.Config{})
	// Rank 1 never takes part: rank 0's calls wait until Close aborts them.
	works := []*collective.Work{
		collective.AllReduceAsync(ctx, comms[0], make([]float32, 1000), collective.Sum),
		collective.BarrierAsync(ctx, comms[0]),
	}
	require.NoError(t, comms[0].Close())
	for _, w := range works {
		err := w.Wait()
		require.Error(t, err)
		require.True(t, errorsIsAny(err, collective.ErrAborted, collective.ErrClosed), "%v", err)
	}
}

func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
