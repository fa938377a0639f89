package transport

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFailureFirstErrorWins(t *testing.T) {
	var calls []error
	f := NewFailure(func(err error) { calls = append(calls, err) })
	assert.NoError(t, f.Err())
	select {
	case <-f.Done():
		t.Fatal("Done is closed before any failure")
	default:
	}

	first, second := errors.New("first"), errors.New("second")
	assert.True(t, f.Fail(first))
	assert.False(t, f.Fail(second))
	assert.Same(t, first, f.Err())
	waitDone(t, f.Done(), "Done")
	assert.Equal(t, []error{first}, calls)
}

func TestFailureNilCallback(t *testing.T) {
	f := NewFailure(nil)
	err := errors.New("boom")
	assert.True(t, f.Fail(err))
	assert.Same(t, err, f.Err())
}

func TestFailureConcurrentFail(t *testing.T) {
	const n = 64
	var calls atomic.Int32
	var got error
	var f *Failure
	doneBeforeCallback := true
	f = NewFailure(func(err error) {
		calls.Add(1)
		got = err
		select {
		case <-f.Done():
		default:
			doneBeforeCallback = false
		}
		// Err already answers inside the callback.
		if f.Err() != err {
			doneBeforeCallback = false
		}
	})

	start := make(chan struct{})
	won := make([]bool, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		errs[i] = fmt.Errorf("failure %d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			won[i] = f.Fail(errs[i])
		}()
	}
	close(start)
	wg.Wait()

	winners := 0
	var winner error
	for i, w := range won {
		if w {
			winners++
			winner = errs[i]
		}
	}
	require.Equal(t, 1, winners, "exactly one Fail reports it recorded the error")
	assert.Equal(t, int32(1), calls.Load(), "onFail runs exactly once")
	assert.Same(t, winner, got, "onFail gets the winning error")
	assert.Same(t, winner, f.Err())
	assert.True(t, doneBeforeCallback, "Done is closed and Err set before onFail runs")
}

// Waiters blocked on Done all wake on the first failure.
func TestFailureWakesAllWaiters(t *testing.T) {
	f := NewFailure(nil)
	const n = 16
	errc := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			<-f.Done()
			errc <- f.Err()
		}()
	}
	cause := errors.New("link broke")
	f.Fail(cause)
	for i := 0; i < n; i++ {
		assert.Same(t, cause, recvErr(t, errc, "waiter"))
	}
}
