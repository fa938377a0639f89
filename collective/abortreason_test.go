package collective_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/transport"
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

// Abort with a cause that wraps another communicator's abort (a peer of a
// sub-communicator gave up, and this rank gives up the parent because of
// it) tells the parent's peers that this rank called Abort, with the
// cause's text: not the other communicator's reason as if it were the
// parent's, whose rank numbers mean other ranks there. The cause's
// sentinels still match; on this rank, the error is no remote abort.
func TestAbortWithAnotherCommunicatorsAbortIsThisRanksAbort(t *testing.T) {
	const n = 3
	parents := local(t, n, collective.Config{})
	subs := make([]*collective.Comm, n) // by parent rank
	requireAllOK(t, each(parents, func(r int, c *collective.Comm) error {
		var err error
		subs[r], err = c.Split(ctx, 0, -r) // sub rank n-1-r
		return err
	}))
	t.Cleanup(func() { closeAll(subs) })
	// Sub rank 0 is parent rank 2: its reason's "rank 0" is not parent
	// rank 0, which passes the sub's failure on to the parent.
	subs[2].Abort(errors.New("disk full"))
	subErr := collective.Barrier(ctx, subs[0])
	var subAbort *transport.RemoteAbortError
	require.ErrorAs(t, subErr, &subAbort)
	require.Equal(t, "rank 0 called Abort: disk full", subAbort.Reason)

	parents[0].Abort(fmt.Errorf("the pipeline's stage failed: %w", subErr))
	errs := each(parents[1:], func(_ int, c *collective.Comm) error { return collective.Barrier(ctx, c) })
	for i, err := range errs {
		r := i + 1
		require.ErrorIs(t, err, collective.ErrAborted, "rank %d", r)
		require.ErrorContains(t, err, "rank 0 called Abort: the pipeline's stage failed: ", "rank %d", r)
		var ra *transport.RemoteAbortError
		require.ErrorAs(t, err, &ra, "rank %d", r)
		// ra.Peer is the rank that told this one (rank 0, or a rank
		// that passed rank 0's reason on); the reason names rank 0.
		assert.True(t, strings.HasPrefix(ra.Reason, "rank 0 called Abort: the pipeline's stage failed: "), "rank %d: %q", r, ra.Reason)
		assert.Contains(t, ra.Reason, ": rank 0 called Abort: disk full", "rank %d: the cause's text", r)
	}
	own := parents[0].Err()
	require.ErrorIs(t, own, collective.ErrAborted)
	require.ErrorContains(t, own, "rank 0 called Abort: the pipeline's stage failed: ")
	assert.False(t, errors.As(own, new(*transport.RemoteAbortError)), "rank 0's own abort is no remote one: %v", own)
}
