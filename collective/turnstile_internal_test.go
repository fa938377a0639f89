package collective

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Calls waiting on a turnstile run in ticket order whatever order they
// start waiting in; a ticket given up (its context done) is stepped over;
// and every wake-up channel goes back to the spares, empty.
func TestTurnstileRunsTicketsInOrderAndStepsOverGivenUp(t *testing.T) {
	var ts turnstile
	const n = 6
	tickets := make([]uint64, n)
	for i := range tickets {
		tickets[i] = ts.take()
	}
	require.NoError(t, ts.wait(context.Background(), tickets[0]))

	cancelled, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() { gaveUp <- ts.wait(cancelled, tickets[2]) }()
	ran := make(chan uint64, n)
	// Waiters start in reverse order: the order they run in is the tickets'.
	for i := n - 1; i >= 1; i-- {
		if i == 2 {
			continue
		}
		go func() {
			if err := ts.wait(context.Background(), tickets[i]); err == nil {
				ran <- tickets[i]
				ts.pass()
			}
		}()
	}
	require.Eventually(t, func() bool { // everyone queued, none running yet
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return len(ts.waiting) == n-1
	}, 30*time.Second, time.Millisecond)
	cancel()
	require.ErrorIs(t, <-gaveUp, context.Canceled)

	ts.pass() // ticket 0 ends
	for _, want := range []uint64{tickets[1], tickets[3], tickets[4], tickets[5]} {
		require.Equal(t, want, <-ran)
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	require.Empty(t, ts.waiting)
	require.Empty(t, ts.given)
	require.Len(t, ts.spare, n-1)
	for _, ch := range ts.spare {
		require.Zero(t, len(ch), "a spare wake-up channel holds a signal")
	}
	require.Equal(t, uint64(n), ts.serving)
}

// A waiter whose context ends just as its turn comes either takes the turn
// or gives it up, never both and never neither: the calls after it still
// run, and no spare channel keeps a stale signal that would wake a later
// waiter early.
func TestTurnstileTurnRacingCancellation(t *testing.T) {
	var ts turnstile
	for range 500 {
		first, racer, after := ts.take(), ts.take(), ts.take()
		require.NoError(t, ts.wait(context.Background(), first))
		ctx, cancel := context.WithCancel(context.Background())
		took := make(chan bool, 1)
		go func() { took <- ts.wait(ctx, racer) == nil }()
		require.Eventually(t, func() bool {
			ts.mu.Lock()
			defer ts.mu.Unlock()
			return len(ts.waiting) == 1
		}, 30*time.Second, 10*time.Microsecond)
		go cancel()
		ts.pass() // first ends: racer's turn, as its context ends
		if <-took {
			ts.pass()
		}
		require.NoError(t, ts.wait(context.Background(), after))
		ts.pass()
		ts.mu.Lock()
		for _, ch := range ts.spare {
			require.Zero(t, len(ch), "a spare wake-up channel holds a signal")
		}
		require.Empty(t, ts.waiting)
		ts.mu.Unlock()
	}
}
