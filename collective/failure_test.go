package collective_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
)

func TestMain(m *testing.M) {
	testjob.RunRank(childRoles)
	goleak.VerifyTestMain(m)
}

// requireAllAborted checks that every rank's call failed with an error that
// matches ErrAborted and also class, and that the failure names the detail.
func requireAllAborted(t *testing.T, errs []error, class error, details ...string) {
	t.Helper()
	for r, err := range errs {
		require.Error(t, err, "rank %d", r)
		assert.ErrorIs(t, err, collective.ErrAborted, "rank %d", r)
		if class != nil {
			assert.ErrorIs(t, err, class, "rank %d: %v", r, err)
		}
		for _, d := range details {
			assert.Contains(t, err.Error(), d, "rank %d", r)
		}
	}
}

func TestMismatchedCallsFailEveryRankNamingBothCalls(t *testing.T) {
	cases := []struct {
		name   string
		rank0  func(c *collective.Comm) error
		others func(c *collective.Comm) error
		words  []string
	}{
		{
			name: "kind",
			rank0: func(c *collective.Comm) error {
				return collective.AllReduce(ctx, c, make([]float32, 12), collective.Sum)
			},
			others: func(c *collective.Comm) error {
				return collective.AllGather(ctx, c, make([]float32, 10), make([]float32, 10*c.Size()))
			},
			words: []string{"AllReduce(float32, count=12, Sum", "AllGather(float32, count=10)", "op #1"},
		},
		{
			name: "count",
			rank0: func(c *collective.Comm) error {
				return collective.AllReduce(ctx, c, make([]float32, 12), collective.Sum)
			},
			others: func(c *collective.Comm) error {
				return collective.AllReduce(ctx, c, make([]float32, 13), collective.Sum)
			},
			words: []string{"count=12", "count=13"},
		},
		{
			name: "element type",
			rank0: func(c *collective.Comm) error {
				return collective.AllReduce(ctx, c, make([]float32, 8), collective.Sum)
			},
			others: func(c *collective.Comm) error { return collective.AllReduce(ctx, c, make([]int32, 8), collective.Sum) },
			words:  []string{"AllReduce(float32", "AllReduce(int32"},
		},
		{
			name: "op",
			rank0: func(c *collective.Comm) error {
				return collective.AllReduce(ctx, c, make([]float64, 8), collective.Max)
			},
			others: func(c *collective.Comm) error {
				return collective.AllReduce(ctx, c, make([]float64, 8), collective.Sum)
			},
			words: []string{"Max", "Sum"},
		},
		{
			name:   "root",
			rank0:  func(c *collective.Comm) error { return collective.Broadcast(ctx, c, make([]int64, 5), 0) },
			others: func(c *collective.Comm) error { return collective.Broadcast(ctx, c, make([]int64, 5), 1) },
			words:  []string{"root=0", "root=1"},
		},
		{
			name:   "empty vectors of different calls",
			rank0:  func(c *collective.Comm) error { return collective.AllReduce(ctx, c, []float32{}, collective.Sum) },
			others: func(c *collective.Comm) error { return collective.Barrier(ctx, c) },
			words:  []string{"AllReduce(float32, count=0, Sum", "Barrier()"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, n := range []int{2, 3, 5} {
				comms := local(t, n, collective.Config{})
				errs := each(comms, func(r int, c *collective.Comm) error {
					if r == 0 {
						return tc.rank0(c)
					}
					return tc.others(c)
				})
				// A rank whose neighbours agreed with it may finish the call
				// correctly (by its own lights) before the abort reaches it; it
				// learns on its next call. No rank ever succeeds twice.
				for r, c := range comms {
					if errs[r] == nil {
						errs[r] = collective.Barrier(ctx, c)
					}
				}
				requireAllAborted(t, errs, collective.ErrMismatch, tc.words...)
				require.ErrorIs(t, collective.Barrier(ctx, comms[0]), collective.ErrAborted)
			}
		})
	}
}

func TestInvalidArgumentsAbortEveryRankInsteadOfHanging(t *testing.T) {
	comms := local(t, 3, collective.Config{})
	errs := each(comms, func(r int, c *collective.Comm) error {
		recv := make([]float32, 4)
		send := make([]float32, 12)
		if r == 1 {
			send = send[:11] // wrong length on one rank only
		}
		return collective.ReduceScatter(ctx, c, send, recv, collective.Sum)
	})
	requireAllAborted(t, errs, collective.ErrInvalid, "rank 1", "len(send)")
}

func TestInvalidArgumentsAreErrorsNotPanics(t *testing.T) {
	one := func(t *testing.T) *collective.Comm { return local(t, 1, collective.Config{})[0] }
	t.Run("avg of integers", func(t *testing.T) {
		err := collective.AllReduce(ctx, one(t), []int32{1}, collective.Avg)
		require.ErrorIs(t, err, collective.ErrInvalid)
		assert.Contains(t, err.Error(), "Avg")
	})
	t.Run("unknown op", func(t *testing.T) {
		require.ErrorIs(t, collective.AllReduce(ctx, one(t), []float32{1}, collective.Op(99)), collective.ErrInvalid)
	})
	t.Run("allgather length", func(t *testing.T) {
		require.ErrorIs(t, collective.AllGather(ctx, one(t), make([]int8, 3), make([]int8, 4)), collective.ErrInvalid)
	})
	t.Run("broadcast root", func(t *testing.T) {
		require.ErrorIs(t, collective.Broadcast(ctx, one(t), make([]int8, 3), 1), collective.ErrInvalid)
		require.ErrorIs(t, collective.Broadcast(ctx, one(t), make([]int8, 3), -1), collective.ErrInvalid)
	})
	t.Run("overlapping buffers", func(t *testing.T) {
		comms := local(t, 2, collective.Config{})
		errs := each(comms, func(r int, c *collective.Comm) error {
			recv := make([]float32, 8)
			return collective.AllGather(ctx, c, recv[1:5], recv) // overlaps, but not as block r
		})
		requireAllAborted(t, errs, collective.ErrInvalid, "overlaps")
	})
	t.Run("local sizes", func(t *testing.T) {
		_, err := collective.Local(0)
		require.ErrorIs(t, err, collective.ErrInvalid)
	})
	t.Run("new config", func(t *testing.T) {
		_, err := collective.New(ctx, collective.Config{Rank: 2, Size: 2})
		require.ErrorIs(t, err, collective.ErrInvalid)
		_, err = collective.New(ctx, collective.Config{Rank: 0, Size: 2})
		require.ErrorIs(t, err, collective.ErrInvalid)
		_, err = collective.New(ctx, collective.Config{Rank: 0, Size: 2, Addr: "127.0.0.1:1", Transport: "carrier-pigeon"})
		require.ErrorIs(t, err, collective.ErrInvalid)
	})
}

func TestTimeoutAbortsEveryRank(t *testing.T) {
	comms := local(t, 3, collective.Config{Timeout: 300 * time.Millisecond})
	start := time.Now()
	// Rank 2 never calls: ranks 0 and 1 time out and abort the communicator.
	errs := each(comms[:2], func(r int, c *collective.Comm) error {
		return collective.AllReduce(ctx, c, make([]float32, 100), collective.Sum)
	})
	require.Less(t, time.Since(start), 10*time.Second)
	requireAllAborted(t, errs, collective.ErrTimeout, "timed out")
	// Rank 2 learns of it on its next call, without waiting for a timeout.
	err := collective.AllReduce(ctx, comms[2], make([]float32, 100), collective.Sum)
	require.ErrorIs(t, err, collective.ErrAborted)
}

// waitingCtx tells when a call first waits on it, so a test can cancel a
// call that is surely under way.
type waitingCtx struct {
	context.Context
	once    sync.Once
	waiting chan struct{}
}

func (c *waitingCtx) Done() <-chan struct{} {
	c.once.Do(func() { close(c.waiting) })
	return c.Context.Done()
}

func TestCancelledContextAbortsEveryRank(t *testing.T) {
	comms := local(t, 3, collective.Config{})
	cctx, cancel := context.WithCancel(ctx)
	errs := make(chan error, 2)
	for r := range 2 {
		w := &waitingCtx{Context: cctx, waiting: make(chan struct{})}
		go func() { errs <- collective.AllReduce(w, comms[r], make([]float32, 100), collective.Sum) }()
		<-w.waiting
	}
	cancel()
	// Ranks 0 and 1 return promptly although rank 2 never joins.
	for range 2 {
		err := <-errs
		require.ErrorIs(t, err, collective.ErrAborted)
		require.ErrorIs(t, err, context.Canceled)
	}
	err := collective.Barrier(ctx, comms[2])
	require.ErrorIs(t, err, collective.ErrAborted)
	assert.Contains(t, err.Error(), "abandoned")
}

// A call made with a context that is already done is not skipped: it takes
// its place in the order (op #1 here, and the next call is op #2) and aborts
// the communicator on every rank. TestAbandonedCallNeverPairsWithTheNextOne
// shows what skipping it did.
func TestCallOnCancelledContextTakesItsPlaceAndAborts(t *testing.T) {
	comms := local(t, 2, collective.Config{})
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err := collective.AllReduce(cctx, comms[0], []float32{1}, collective.Sum)
	require.ErrorIs(t, err, collective.ErrAborted)
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorContains(t, err, "rank 0 abandoned AllReduce(float32, count=1, Sum")
	st := comms[0].Status()
	require.Len(t, st.Recent, 1)
	require.Equal(t, uint64(1), st.Recent[0].Op)
	require.True(t, st.Recent[0].Err, "the abandoned call is recorded as failed")
	for r, c := range comms {
		err := collective.Barrier(ctx, c)
		require.ErrorIs(t, err, collective.ErrAborted, "rank %d", r)
		require.ErrorIs(t, err, context.Canceled, "rank %d", r)
		require.ErrorContains(t, err, "at op #1", "rank %d", r)
	}
	// A deadline that has passed is a cause of its own class.
	comms = local(t, 2, collective.Config{})
	dctx, cancel := context.WithDeadline(ctx, time.Now())
	defer cancel()
	err = collective.Barrier(dctx, comms[1])
	require.ErrorIs(t, err, collective.ErrAborted)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorIs(t, collective.Barrier(ctx, comms[0]), context.DeadlineExceeded)
}

func TestPeerThatClosedIsNamed(t *testing.T) {
	comms := local(t, 3, collective.Config{})
	require.NoError(t, comms[1].Close())
	errs := each([]*collective.Comm{comms[0], comms[2]}, func(r int, c *collective.Comm) error {
		return collective.AllReduce(ctx, c, make([]float32, 10), collective.Sum)
	})
	for _, err := range errs {
		require.ErrorIs(t, err, collective.ErrAborted)
		assert.Contains(t, err.Error(), "rank 1")
	}
}

func TestAbortReachesEveryRank(t *testing.T) {
	comms := local(t, 4, collective.Config{})
	errs := make(chan error, 3)
	for r := 1; r < 4; r++ {
		go func() { errs <- collective.AllReduce(ctx, comms[r], make([]float64, 1000), collective.Sum) }()
	}
	comms[0].Abort(errors.New("checkpoint failed"))
	for range 3 {
		err := <-errs
		require.ErrorIs(t, err, collective.ErrAborted)
		assert.Contains(t, err.Error(), "rank 0 called Abort: checkpoint failed")
	}
	require.ErrorIs(t, comms[0].Err(), collective.ErrAborted)
}

func TestCloseIsIdempotentAndLaterCallsFail(t *testing.T) {
	comms := local(t, 2, collective.Config{})
	closeAll(comms)
	closeAll(comms)
	err := collective.AllReduce(ctx, comms[0], []float32{1}, collective.Sum)
	require.ErrorIs(t, err, collective.ErrClosed)
	assert.True(t, strings.Contains(err.Error(), "AllReduce"))
}

// Close on one goroutine while a call of the same rank is in progress on
// another (it waits for rank 1, which has not called) aborts the call at
// once, with an error that says the communicator was closed during a call,
// and the peer learns of it.
func TestCloseDuringCallAbortsIt(t *testing.T) {
	comms := local(t, 2, collective.Config{Timeout: time.Hour})
	done := make(chan error, 1)
	go func() {
		done <- collective.AllReduce(ctx, comms[0], make([]float32, 1<<16), collective.Sum)
	}()
	// In progress: begun (the recorder says so) and not ended, since rank 1
	// has not called.
	require.Eventually(t, func() bool { return comms[0].Status().Running != "" }, testTimeout, time.Millisecond)
	require.NoError(t, comms[0].Close())
	err := <-done
	require.ErrorIs(t, err, collective.ErrAborted)
	require.ErrorIs(t, err, collective.ErrClosed)
	require.ErrorContains(t, err, "AllReduce(float32, count=65536, Sum")
	require.ErrorContains(t, err, "rank 0 closed the communicator during a call")
	st := comms[0].Status()
	require.Equal(t, "", st.Running)
	require.True(t, st.Recent[len(st.Recent)-1].Err, "the call is recorded as failed")
	// Rank 1 learns of it from the abort notice or, where the notice could
	// not overtake the frame rank 0 was writing to it, from the closed
	// connection: either way its call fails, naming rank 0.
	err = collective.AllReduce(ctx, comms[1], make([]float32, 1<<16), collective.Sum)
	require.ErrorIs(t, err, collective.ErrAborted)
	require.ErrorContains(t, err, "rank 0")
}
