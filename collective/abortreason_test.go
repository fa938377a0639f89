package collective_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// A rank that aborts and closes its communicator at once, while its peers
// are in the middle of a loop of collectives that write to it and read
// from it, is reported by every peer with the reason it gave, never as a
// lost rank: the notice is in the peers' receive buffers (or beside the
// stream) before the connections close, and a peer whose write fails, or
// whose read finds the end, reads what is still there first. Over mem,
// TCP and shared memory, several times each, with small vectors (frames
// that fit every buffer) and large ones (frames a peer may not have asked
// for yet when the abort comes).
func TestAbortThenCloseGivesEveryPeerTheReason(t *testing.T) {
	for _, tr := range []string{"mem", "tcp", "shm"} {
		for _, count := range []int{3, 1 << 18} {
			t.Run(fmt.Sprintf("%s/count=%d", tr, count), func(t *testing.T) {
				for round := range 8 {
					abortThenClose(t, formComms(t, tr, 3, collective.Config{}), count, round)
				}
			})
		}
	}
}

func abortThenClose(t *testing.T, comms []*collective.Comm, count, round int) {
	const calls = 5
	reason := fmt.Sprintf("the checkpoint of round %d failed", round)
	progress := make(chan int, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for k := range progress {
			if k == calls {
				// Abort from another goroutine while rank 0 is in its next
				// call: its peers are writing to it and reading from it.
				comms[0].Abort(errors.New(reason))
				_ = comms[0].Close()
				return
			}
		}
	}()
	errs := each(comms, func(r int, c *collective.Comm) error {
		buf := make([]float32, count)
		for k := 0; ; k++ {
			if r == 0 {
				select {
				case progress <- k:
				case <-done:
				}
			}
			if err := collective.AllReduce(ctx, c, buf, collective.Sum); err != nil {
				return err
			}
		}
	})
	<-done
	// Rank 0's loop ends on the abort, or on the closed communicator if
	// its next call came after Close.
	require.True(t, errorsIsAny(errs[0], collective.ErrAborted, collective.ErrClosed), "rank 0: %v", errs[0])
	for r := 1; r < len(comms); r++ {
		require.ErrorIs(t, errs[r], collective.ErrAborted, "rank %d", r)
		require.ErrorContains(t, errs[r], "rank 0 called Abort: "+reason, "rank %d, round %d", r, round)
	}
	closeAll(comms)
}
