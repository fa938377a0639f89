package collective_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// promptly is how soon the other ranks must learn that a call was
// abandoned: far below the communicator's timeout (abandonTimeout), so that
// a rank that waited for its timeout fails the test.
const (
	promptly       = time.Second
	abandonTimeout = time.Minute
)

var transports = []string{"mem", "tcp", "shm", "mixed"}

// An abandoned call takes its place in the order and aborts every rank: no
// rank's next call can pair with its peers' previous one. Rank 1 abandons
// AllReduce({1}) in each way a caller can; then every rank calls
// AllReduce({100}). Before the fix rank 1's second call met the others'
// first and returned nil with 102.
func TestAbandonedCallNeverPairsWithTheNextOne(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr+"/cancelled before the call", func(t *testing.T) {
			comms := formComms(t, tr, 3, collective.Config{Timeout: abandonTimeout})
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			abandonThenCallAgain(t, comms, abandonment{
				op: "op #1",
				abandon: func(c *collective.Comm, buf []float32) error {
					return collective.AllReduce(cctx, c, buf, collective.Sum)
				},
			})
		})
		t.Run(tr+"/cancelled while waiting for its turn", func(t *testing.T) {
			comms := formComms(t, tr, 3, collective.Config{Timeout: abandonTimeout})
			// Rank 1's first call, AllReduce({1000}), waits for ranks 0 and 2,
			// which make it only after rank 1 has abandoned its second call,
			// queued behind it: the queued call must not wait for the first.
			ahead := []float32{1000}
			first := collective.AllReduceAsync(ctx, comms[1], ahead, collective.Sum)
			require.Eventually(t, func() bool { return comms[1].Status().Running != "" }, testTimeout, time.Millisecond)
			cctx, cancel := context.WithCancel(ctx)
			w := &waitingCtx{Context: cctx, waiting: make(chan struct{})}
			abandonThenCallAgain(t, comms, abandonment{
				op:    "op #2",
				ahead: true,
				abandon: func(c *collective.Comm, buf []float32) error {
					return collective.AllReduceAsync(w, c, buf, collective.Sum).Wait()
				},
				whenAbandoned: func() {
					<-w.waiting // queued behind the first call, which is still running
					cancel()
				},
			})
			// The first call may have completed, with the others' (they make
			// it after the abandon, which may overtake its notice), but only
			// with the right sum.
			if err := first.Wait(); err != nil {
				require.ErrorIs(t, err, collective.ErrAborted)
				require.Regexp(t, abandonedAllReduce("op #2"), err.Error())
			} else {
				require.Equal(t, []float32{1002}, ahead)
			}
		})
		t.Run(tr+"/cancelled during the call", func(t *testing.T) {
			comms := formComms(t, tr, 3, collective.Config{Timeout: abandonTimeout})
			cctx, cancel := context.WithCancel(ctx)
			w := &waitingCtx{Context: cctx, waiting: make(chan struct{})}
			abandonThenCallAgain(t, comms, abandonment{
				op: "op #1",
				abandon: func(c *collective.Comm, buf []float32) error {
					return collective.AllReduce(w, c, buf, collective.Sum)
				},
				whenAbandoned: func() {
					<-w.waiting // in the call, waiting for a peer
					require.True(t, strings.HasPrefix(comms[1].Status().Running, "AllReduce(float32, count=1, Sum"), comms[1].Status().Running)
					cancel()
				},
				sent: true,
			})
		})
	}
}

// abandonment is how rank 1 abandons its call AllReduce({1}).
type abandonment struct {
	op      string // the abandoned call's number: "op #N"
	abandon func(c *collective.Comm, buf []float32) error
	// whenAbandoned, if set, returns once the call is abandoned.
	whenAbandoned func()
	// ahead: rank 1 has AllReduce({1000}) in flight before it, which the
	// others make first (it may complete, with 1002).
	ahead bool
	// sent: rank 1 abandons it during the call, when its data may already be
	// on the way: the others may then complete it, with 3.
	sent bool
}

// abandonThenCallAgain has rank 1 make AllReduce({1}) by abandon, and ranks
// 0 and 2 make it with a live context once it is abandoned; then every rank
// calls AllReduce({100}). No second call may succeed (the communicator is
// aborted), nor rank 1's first; the others' first only with the right sum
// (see abandonment.sent). Ranks 0 and 2 learn of it promptly, and every
// error names rank 1's abandoned call.
func abandonThenCallAgain(t *testing.T, comms []*collective.Comm, a abandonment) {
	t.Helper()
	type result struct {
		first, second error
		sums          [2][]float32
		took          time.Duration // until the first call returned, from the abandon
	}
	results := make([]result, len(comms))
	for r := range results {
		results[r].sums = [2][]float32{{1}, {100}}
	}
	abandoned := make(chan time.Time, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		res := &results[1]
		errc := make(chan error, 1)
		go func() { errc <- a.abandon(comms[1], res.sums[0]) }()
		if a.whenAbandoned != nil {
			a.whenAbandoned()
		}
		abandoned <- time.Now()
		res.first = <-errc
		res.second = collective.AllReduce(ctx, comms[1], res.sums[1], collective.Sum)
	}()
	at := <-abandoned
	call := abandonedAllReduce(a.op)
	each(comms, func(r int, c *collective.Comm) error {
		if r == 1 {
			return nil
		}
		res := &results[r]
		if a.ahead {
			sum := []float32{1}
			if err := collective.AllReduce(ctx, c, sum, collective.Sum); err == nil {
				assert.Equal(t, []float32{1002}, sum, "rank %d", r)
			} else {
				assert.Regexp(t, call, err, "rank %d", r)
			}
		}
		res.first = collective.AllReduce(ctx, c, res.sums[0], collective.Sum)
		res.took = time.Since(at)
		res.second = collective.AllReduce(ctx, c, res.sums[1], collective.Sum)
		return nil
	})
	<-done
	for r, res := range results {
		for i, err := range []error{res.first, res.second} {
			if i == 0 && r != 1 && a.sent && err == nil {
				require.Equal(t, []float32{3}, res.sums[0], "rank %d", r)
				continue
			}
			require.Error(t, err, "rank %d call %d returned nil with %v", r, i+1, res.sums[i])
			assert.ErrorIs(t, err, collective.ErrAborted, "rank %d call %d", r, i+1)
			assert.ErrorIs(t, err, context.Canceled, "rank %d call %d", r, i+1)
			assert.Regexp(t, call, err, "rank %d call %d", r, i+1)
		}
		if r != 1 {
			assert.Less(t, res.took, promptly, "rank %d learned of the abandoned call only after %v", r, res.took)
		}
	}
	for r, c := range comms {
		require.ErrorIs(t, c.Err(), collective.ErrAborted, "rank %d", r)
	}
}

// abandonedAllReduce matches the cause every rank's error gives when rank 1
// abandoned AllReduce({1}) at op (the call names the algorithm it chose).
func abandonedAllReduce(op string) *regexp.Regexp {
	return regexp.MustCompile(`rank 1 abandoned AllReduce\(float32, count=1, Sum(, \w+)?\) at ` + op + `\b`)
}

// The same for Send and Recv: an abandoned Send or Recv takes its place
// among the messages of its pair of ranks and aborts both, so the next Send
// never meets the previous Recv.
func TestAbandonedSendOrRecvNeverPairsWithTheNextOne(t *testing.T) {
	for _, tr := range transports {
		for _, side := range []string{"Send", "Recv"} {
			// The abandoning rank is 0 for a Send, 1 for a Recv; its peer
			// makes both calls with a live context.
			abandoner := 0
			if side == "Recv" {
				abandoner = 1
			}
			call := func(c *collective.Comm, ctx context.Context, buf []float32, tag int) error {
				if c.Rank() == 0 {
					return collective.Send(ctx, c, buf, 1, tag)
				}
				return collective.Recv(ctx, c, buf, 0, tag)
			}
			want := fmt.Sprintf("rank %d abandoned %s(float32, count=1, to rank 1, tag=0), message #1", abandoner, side)
			if side == "Recv" {
				want = fmt.Sprintf("rank %d abandoned %s(float32, count=1, from rank 0, tag=0), message #1", abandoner, side)
			}
			t.Run(tr+"/"+side+"/cancelled before the call", func(t *testing.T) {
				comms := formComms(t, tr, 2, collective.Config{Timeout: abandonTimeout})
				cctx, cancel := context.WithCancel(ctx)
				cancel()
				abandonMessageThenSendAgain(t, comms, abandoner, want, func(c *collective.Comm, buf []float32) error {
					return call(c, cctx, buf, 0)
				}, nil, false)
			})
			t.Run(tr+"/"+side+"/cancelled during the call", func(t *testing.T) {
				comms := formComms(t, tr, 2, collective.Config{Timeout: abandonTimeout})
				cctx, cancel := context.WithCancel(ctx)
				w := &waitingCtx{Context: cctx, waiting: make(chan struct{})}
				abandonMessageThenSendAgain(t, comms, abandoner, want, func(c *collective.Comm, buf []float32) error {
					return call(c, w, buf, 0)
				}, func() {
					<-w.waiting // in the call (connecting, or waiting for the peer, which has not called yet)
					cancel()
				}, true)
			})
		}
		// A Recv queued behind another one that waits for its Send.
		t.Run(tr+"/Recv/cancelled while waiting for its turn", func(t *testing.T) {
			comms := formComms(t, tr, 2, collective.Config{Timeout: abandonTimeout})
			first := collective.RecvAsync(ctx, comms[1], make([]float32, 1), 0, 7)
			cctx, cancel := context.WithCancel(ctx)
			w := &waitingCtx{Context: cctx, waiting: make(chan struct{})}
			want := "rank 1 abandoned Recv(float32, count=1, from rank 0, tag=0), message #2"
			start := time.Now()
			queued := collective.RecvAsync(w, comms[1], make([]float32, 1), 0, 0)
			<-w.waiting
			cancel()
			for _, work := range []*collective.Work{queued, first} {
				err := work.Wait()
				require.ErrorIs(t, err, collective.ErrAborted)
				require.ErrorIs(t, err, context.Canceled)
				require.ErrorContains(t, err, want)
			}
			require.Less(t, time.Since(start), promptly, "the queued Recv waited for the one before it")
			// Rank 0 learns of it at once, in any call that needs rank 1. (A
			// Send may return before: it returns once its bytes are handed
			// to the connection, as MPI_Send may.)
			start = time.Now()
			err := collective.Recv(ctx, comms[0], make([]float32, 1), 1, 7)
			require.Less(t, time.Since(start), promptly)
			require.ErrorIs(t, err, collective.ErrAborted)
			require.ErrorContains(t, err, want)
			err = collective.Barrier(ctx, comms[0])
			require.ErrorIs(t, err, collective.ErrAborted)
			require.ErrorContains(t, err, want)
		})
	}
}

// abandonMessageThenSendAgain has rank abandoner make its first call (a
// Send of {1} from rank 0, or a Recv at rank 1) by abandon, while its peer
// makes its own with a live context; then rank 0 sends {100} and rank 1
// receives. No second call may succeed, nor the abandoned one. Where it was
// abandoned during the call (sent), a Send may have been written already:
// the peer's Recv may then complete, but only with the message sent, {1}.
func abandonMessageThenSendAgain(t *testing.T, comms []*collective.Comm, abandoner int, want string, abandon func(c *collective.Comm, buf []float32) error, whenAbandoned func(), sent bool) {
	t.Helper()
	type result struct {
		first, second error
		bufs          [2][]float32
		took          time.Duration
	}
	results := make([]result, 2)
	peer := 1 - abandoner
	call := func(c *collective.Comm, buf []float32) error {
		if c.Rank() == 0 {
			return collective.Send(ctx, c, buf, 1, 0)
		}
		return collective.Recv(ctx, c, buf, 0, 0)
	}
	for r := range results {
		results[r].bufs = [2][]float32{{1}, {100}}
		if r == 1 {
			results[r].bufs = [2][]float32{{-1}, {-1}}
		}
	}
	abandoned := make(chan time.Time, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		res := &results[abandoner]
		errc := make(chan error, 1)
		go func() { errc <- abandon(comms[abandoner], res.bufs[0]) }()
		if whenAbandoned != nil {
			whenAbandoned()
		}
		abandoned <- time.Now()
		res.first = <-errc
		res.second = call(comms[abandoner], res.bufs[1])
	}()
	at := <-abandoned
	res := &results[peer]
	res.first = call(comms[peer], res.bufs[0])
	res.took = time.Since(at)
	res.second = call(comms[peer], res.bufs[1])
	<-done
	for r, res := range results {
		for i, err := range []error{res.first, res.second} {
			if i == 0 && r == peer && sent && err == nil {
				// A Send returns once its bytes are handed over (over TCP, to
				// the kernel), so it may succeed although the Recv it met
				// was abandoned; the Recv that took it holds it.
				if results[1].first == nil {
					require.Equal(t, []float32{1}, results[1].bufs[0], "rank 1 received another message than the one sent")
				}
				continue
			}
			require.Error(t, err, "rank %d call %d returned nil (received %v)", r, i+1, results[1].bufs)
			assert.ErrorIs(t, err, collective.ErrAborted, "rank %d call %d", r, i+1)
			assert.ErrorIs(t, err, context.Canceled, "rank %d call %d", r, i+1)
			assert.ErrorContains(t, err, want, "rank %d call %d", r, i+1)
		}
	}
	assert.Less(t, res.took, promptly, "rank %d learned of the abandoned message only after %v", peer, res.took)
	require.Equal(t, []float32{-1}, results[1].bufs[1], "rank 1 received the next message")
}
