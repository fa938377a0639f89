package collective_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/kernel"
)

// An AllReducer started again and again gives every call's exact result on
// every rank, bitwise alike, for odd sizes and 1..5 ranks.
func TestAllReducerRepeatedCallsAreExact(t *testing.T) {
	for n := 1; n <= 5; n++ {
		for _, op := range []collective.Op{collective.Sum, collective.Avg, collective.Max} {
			t.Run(fmt.Sprintf("n=%d/%v", n, op), func(t *testing.T) {
				comms := local(t, n, tinyPipeline)
				const count = 1009
				results := make([][]float64, n)
				requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
					buf := make([]float64, count)
					a, err := collective.NewAllReducer(c, buf, op, collective.AllReducerOptions{})
					if err != nil {
						return err
					}
					defer a.Close()
					for call := range 4 {
						for i := range buf { // a different input every call
							buf[i] = input[float64](r+call, i, op)
						}
						if err := a.Start(ctx); err != nil {
							return err
						}
						if err := a.Wait(ctx); err != nil {
							return err
						}
						for i, got := range buf {
							want := 0.0
							if op == collective.Max {
								want = input[float64](call, i, op)
							}
							for q := range n {
								x := input[float64](q+call, i, op)
								switch op {
								case collective.Max:
									want = max(want, x)
								default:
									want += x
								}
							}
							if op == collective.Avg {
								want /= float64(n)
							}
							if got != want {
								return fmt.Errorf("rank %d call %d: [%d] = %v, want %v", r, call, i, got, want)
							}
						}
					}
					results[r] = buf
					return nil
				}))
				requireIdentical(t, results)
			})
		}
	}
}

// Start takes its place in the issue order when it is called: a Broadcast
// issued after it on the same goroutine runs after it, and one issued before
// runs before, on every rank.
func TestAllReducerTakesItsPlaceAtStart(t *testing.T) {
	const n = 3
	comms := local(t, n, collective.Config{})
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		grads := []float32{float32(r), 1}
		a, err := collective.NewAllReducer(c, grads, collective.Sum, collective.AllReducerOptions{})
		if err != nil {
			return err
		}
		defer a.Close()
		before := collective.BroadcastAsync(ctx, c, []int32{int32(r)}, 0)
		if err := a.Start(ctx); err != nil {
			return err
		}
		after := []int64{int64(r)}
		if err := collective.Broadcast(ctx, c, after, 1); err != nil {
			return err
		}
		if err := errors.Join(before.Wait(), a.Wait(ctx)); err != nil {
			return err
		}
		if grads[0] != 3 || grads[1] != 3 || after[0] != 1 {
			return fmt.Errorf("rank %d: grads %v, broadcast %v", r, grads, after)
		}
		recent := c.Status().Recent
		var calls []string
		for _, rec := range recent[len(recent)-3:] {
			calls = append(calls, rec.Call[:strings.IndexByte(rec.Call, '(')])
		}
		if want := "Broadcast AllReduce Broadcast"; strings.Join(calls, " ") != want {
			return fmt.Errorf("rank %d ran %v, want %s", r, calls, want)
		}
		return nil
	}))
}

// AllReducerOptions.Compression overrides the communicator's, both ways: a
// bf16 AllReducer on an uncompressed communicator computes bitwise what an
// AllReduce on a bf16 communicator computes, and a "none" AllReducer on a
// bf16 communicator computes the exact sum.
func TestAllReducerCompressionOverridesTheCommunicators(t *testing.T) {
	const n, count = 3, 10007
	data := func(r int) []float32 {
		buf := make([]float32, count)
		for i := range buf {
			buf[i] = float32(i%97)*1.001 + float32(r)/3 // not representable in bf16
		}
		return buf
	}
	ring := collective.Config{Algorithm: "ring", Timeout: testTimeout}
	bf16 := ring
	bf16.Compression = "bf16"

	viaComm := make([][]float32, n)
	requireAllOK(t, each(local(t, n, bf16), func(r int, c *collective.Comm) error {
		viaComm[r] = data(r)
		return collective.AllReduce(ctx, c, viaComm[r], collective.Sum)
	}))
	viaReducer := make([][]float32, n)
	requireAllOK(t, each(local(t, n, ring), func(r int, c *collective.Comm) error {
		viaReducer[r] = data(r)
		return startWait(c, viaReducer[r], "bf16")
	}))
	exact := make([][]float32, n)
	requireAllOK(t, each(local(t, n, bf16), func(r int, c *collective.Comm) error {
		exact[r] = data(r)
		return startWait(c, exact[r], "none")
	}))
	plain := make([][]float32, n)
	requireAllOK(t, each(local(t, n, ring), func(r int, c *collective.Comm) error {
		plain[r] = data(r)
		return collective.AllReduce(ctx, c, plain[r], collective.Sum)
	}))

	requireIdentical(t, viaReducer)
	requireIdentical(t, exact)
	require.Equal(t, kernel.Bytes(viaComm[0]), kernel.Bytes(viaReducer[0]), "bf16 AllReducer = AllReduce on a bf16 communicator")
	require.Equal(t, kernel.Bytes(plain[0]), kernel.Bytes(exact[0]), `"none" AllReducer on a bf16 communicator = AllReduce uncompressed`)
	differs := 0
	for i := range count {
		if viaReducer[0][i] != exact[0][i] {
			differs++
		}
	}
	assert.Greater(t, differs, count/2, "bf16 rounds most of these values")
}

func startWait(c *collective.Comm, buf []float32, compression string) error {
	a, err := collective.NewAllReducer(c, buf, collective.Sum, collective.AllReducerOptions{Compression: compression})
	if err != nil {
		return err
	}
	defer a.Close()
	if err := a.Start(ctx); err != nil {
		return err
	}
	return a.Wait(ctx)
}

// Ranks whose AllReducers compress differently fail with ErrMismatch, never
// decoding each other's bytes as their own.
func TestAllReducerCompressionMismatchFailsEveryRank(t *testing.T) {
	comms := local(t, 2, collective.Config{Algorithm: "ring"})
	errs := each(comms, func(r int, c *collective.Comm) error {
		return startWait(c, make([]float32, 4096), []string{"bf16", "fp16"}[r])
	})
	for r, err := range errs {
		require.ErrorIs(t, err, collective.ErrMismatch, "rank %d", r)
	}
}

func TestAllReducerSteadyStateAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	// inFlight reducers are started back to back and then waited for, as
	// data parallel training's buckets are: all but the first wait for
	// their turn behind the ones before.
	for _, compression := range []string{"", "bf16"} {
		for _, count := range []int{1, 1 << 16} {
			for _, inFlight := range []int{1, 4} {
				t.Run(fmt.Sprintf("%q/%d/in-flight=%d", compression, count, inFlight), func(t *testing.T) {
					comms := local(t, 3, collective.Config{})
					reducers := make([][]*collective.AllReducer[float32], len(comms))
					for r, c := range comms {
						for range inFlight {
							a, err := collective.NewAllReducer(c, make([]float32, count), collective.Avg, collective.AllReducerOptions{Compression: compression})
							require.NoError(t, err)
							t.Cleanup(func() { a.Close() })
							reducers[r] = append(reducers[r], a)
						}
					}
					requireNoAllocs(t, newDriver(t, comms, func(r int, c *collective.Comm) error {
						for _, a := range reducers[r] {
							if err := a.Start(ctx); err != nil {
								return err
							}
						}
						for _, a := range reducers[r] {
							if err := a.Wait(ctx); err != nil {
								return err
							}
						}
						return nil
					}), "step of AllReducer calls")
				})
			}
		}
	}
}

func TestAllReducerMisuseIsAnError(t *testing.T) {
	comms := local(t, 1, collective.Config{})
	_, err := collective.NewAllReducer(comms[0], make([]int32, 3), collective.Avg, collective.AllReducerOptions{})
	require.ErrorIs(t, err, collective.ErrInvalid, "Avg of int32")
	_, err = collective.NewAllReducer(comms[0], make([]float32, 3), collective.Sum, collective.AllReducerOptions{Compression: "gzip"})
	require.ErrorIs(t, err, collective.ErrInvalid)

	a, err := collective.NewAllReducer(comms[0], make([]float32, 3), collective.Sum, collective.AllReducerOptions{})
	require.NoError(t, err)
	require.ErrorIs(t, a.Wait(ctx), collective.ErrInvalid, "Wait without Start")
	require.NoError(t, a.Start(ctx))
	require.ErrorIs(t, a.Start(ctx), collective.ErrInvalid, "Start twice")
	require.NoError(t, a.Wait(ctx))
	require.NoError(t, a.Close())
	require.NoError(t, a.Close())
	require.ErrorIs(t, a.Start(ctx), collective.ErrInvalid, "Start after Close")
}

// A Wait abandoned by its context aborts the communicator on every rank:
// the peer that never joined the call fails its next call, naming the rank
// that abandoned it.
func TestAllReducerAbandonedWaitAbortsEveryRank(t *testing.T) {
	comms := local(t, 2, collective.Config{})
	a, err := collective.NewAllReducer(comms[0], make([]float32, 100), collective.Sum, collective.AllReducerOptions{})
	require.NoError(t, err)
	defer a.Close()
	require.NoError(t, a.Start(ctx))
	cctx, cancel := context.WithCancelCause(ctx)
	cancel(errors.New("step abandoned"))
	err = a.Wait(cctx) // rank 1 never calls: only the abort ends the call
	require.ErrorContains(t, err, "step abandoned")
	require.ErrorIs(t, err, collective.ErrAborted)
	err = collective.Barrier(ctx, comms[1])
	require.ErrorIs(t, err, collective.ErrAborted)
	require.ErrorContains(t, err, "rank 0") // the cause, or that rank 0 was lost: the notice races the disconnection
	require.ErrorContains(t, comms[0].Err(), "rank 0 abandoned an AllReduce(count=100) while waiting for it: step abandoned")
}

// Close abandons a call still in flight: the communicator is aborted on
// every rank (a peer fails its next call, naming the rank), and Close
// returns without waiting for the peers' timeout.
func TestAllReducerCloseAbandonsTheCallInFlight(t *testing.T) {
	comms := local(t, 2, collective.Config{})
	bufs := [][]float32{{1, 2}, {10, 20}}
	a, err := collective.NewAllReducer(comms[0], bufs[0], collective.Sum, collective.AllReducerOptions{})
	require.NoError(t, err)
	require.NoError(t, a.Start(ctx))
	require.NoError(t, collective.AllReduce(ctx, comms[1], bufs[1], collective.Sum))
	require.NoError(t, a.Wait(ctx))
	require.NoError(t, a.Close(), "no call in flight: nothing to abandon")
	require.NoError(t, comms[0].Err())
	assert.Equal(t, []float32{11, 22}, bufs[0])

	b, err := collective.NewAllReducer(comms[0], bufs[0], collective.Sum, collective.AllReducerOptions{})
	require.NoError(t, err)
	require.NoError(t, b.Start(ctx)) // rank 1 never comes
	require.NoError(t, b.Close())
	require.ErrorIs(t, comms[0].Err(), collective.ErrAborted)
	err = collective.Barrier(ctx, comms[1])
	require.ErrorIs(t, err, collective.ErrAborted)
	require.ErrorContains(t, err, "rank 0") // the cause, or that rank 0 was lost: the notice races the disconnection
	require.ErrorContains(t, comms[0].Err(), "rank 0 closed an AllReducer during its AllReduce(count=2)")
}
