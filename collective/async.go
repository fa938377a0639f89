package collective

import (
	"context"
	"sync"
)

// turnstile runs calls one at a time in the order they were issued: a call
// takes a ticket when it is made (in the caller's goroutine) and runs when
// its number comes up. Sync calls take the ticket on entry; async calls take
// it before they return their Work, so that
//
//	w := collective.AllReduceAsync(ctx, c, grads, collective.Sum)
//	err := collective.Broadcast(ctx, c, params, 0) // runs after the AllReduce
//
// issues the same order on every rank whatever the goroutines' scheduling:
// ranks that issue the same calls in the same order never deadlock.
type turnstile struct {
	mu      sync.Mutex
	next    uint64 // the ticket the next call takes
	serving uint64 // the ticket allowed to run
	running bool   // the serving ticket has begun
	// waiting are the calls blocked in wait, each on a channel of its own
	// that pass signals when the call's number comes up. Channels are
	// taken from spare and put back after use: calls that wait every
	// step (several buckets of a training step in flight) allocate
	// nothing once there are as many as ever wait at once.
	waiting []waiter
	spare   []chan struct{}
	// given are tickets whose callers gave up before their turn: serving
	// steps over them.
	given map[uint64]struct{}
}

// waiter is a call blocked in wait: its ticket, and the channel (buffered,
// one slot) that pass sends on when serving reaches it.
type waiter struct {
	ticket uint64
	wake   chan struct{}
}

func (ts *turnstile) take() uint64 {
	ts.mu.Lock()
	t := ts.next
	ts.next++
	ts.mu.Unlock()
	return t
}

// wait blocks until ticket t may run, or until ctx is done. Then it returns
// ctx's error and gives the ticket up: its turn is skipped, and the caller
// must not pass. A turn that comes as ctx ends is taken (nil): the caller
// sees ctx's state itself.
func (ts *turnstile) wait(ctx context.Context, t uint64) error {
	ts.mu.Lock()
	if ts.serving == t {
		ts.running = true
		ts.mu.Unlock()
		return nil
	}
	var wake chan struct{}
	if n := len(ts.spare); n > 0 {
		wake = ts.spare[n-1]
		ts.spare = ts.spare[:n-1]
	} else {
		wake = make(chan struct{}, 1)
	}
	ts.waiting = append(ts.waiting, waiter{ticket: t, wake: wake})
	ts.mu.Unlock()
	select {
	case <-wake:
		ts.mu.Lock()
	case <-ctx.Done():
		ts.mu.Lock()
		if ts.serving == t {
			// pass has signalled (under the lock, as it moved serving to
			// t): take the signal, so that the channel goes back empty,
			// and the turn.
			<-wake
			break
		}
		ts.unwait(t)
		ts.spare = append(ts.spare, wake)
		if ts.given == nil {
			ts.given = make(map[uint64]struct{})
		}
		ts.given[t] = struct{}{}
		ts.mu.Unlock()
		return ctx.Err()
	}
	ts.spare = append(ts.spare, wake)
	ts.running = true
	ts.mu.Unlock()
	return nil
}

// unwait removes ticket t's waiter (ts.mu held).
func (ts *turnstile) unwait(t uint64) {
	for i, w := range ts.waiting {
		if w.ticket == t {
			last := len(ts.waiting) - 1
			ts.waiting[i] = ts.waiting[last]
			ts.waiting[last] = waiter{}
			ts.waiting = ts.waiting[:last]
			return
		}
	}
}

// pass ends the running call's turn and wakes the call whose turn is next,
// if it waits.
func (ts *turnstile) pass() {
	ts.mu.Lock()
	ts.serving++
	for {
		if _, ok := ts.given[ts.serving]; !ok {
			break
		}
		delete(ts.given, ts.serving)
		ts.serving++
	}
	ts.running = false
	for _, w := range ts.waiting {
		if w.ticket == ts.serving {
			ts.unwait(w.ticket)
			w.wake <- struct{}{} // never blocks: one slot, one signal per wait
			break
		}
	}
	ts.mu.Unlock()
}

// busy reports whether a call runs or waits.
func (ts *turnstile) busy() bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.running || ts.serving != ts.next
}

// ticketKey carries an async call's ticket to the call it runs.
type ticketKey struct{}

func ticketOf(ctx context.Context, c *Comm) uint64 {
	switch t := ctx.Value(ticketKey{}).(type) {
	case uint64:
		return t
	case *uint64: // an AllReducer's (reuse.go), which must not allocate
		return *t
	}
	return c.turn.take()
}

// Work is a call in flight, made by one of the *Async functions.
type Work struct {
	done chan struct{}
	err  error
}

// Wait waits for the call and returns its error.
func (w *Work) Wait() error {
	<-w.done
	return w.err
}

// Done is closed when the call has finished.
func (w *Work) Done() <-chan struct{} { return w.done }

// async takes the next ticket now and runs call on its turn, on its own
// goroutine (which ends with the call: every call is bounded by the
// communicator's timeout and by its abort).
func async(ctx context.Context, c *Comm, call func(ctx context.Context) error) *Work {
	w := &Work{done: make(chan struct{})}
	ctx = context.WithValue(ctx, ticketKey{}, c.turn.take())
	go func() {
		w.err = call(ctx)
		close(w.done)
	}()
	return w
}

// AllReduceAsync is AllReduce, returning at once; buf must not be touched
// until the Work is done.
func AllReduceAsync[T Elem](ctx context.Context, c *Comm, buf []T, op Op) *Work {
	return async(ctx, c, func(ctx context.Context) error { return AllReduce(ctx, c, buf, op) })
}

// ReduceScatterAsync is ReduceScatter, returning at once.
func ReduceScatterAsync[T Elem](ctx context.Context, c *Comm, send, recv []T, op Op) *Work {
	return async(ctx, c, func(ctx context.Context) error { return ReduceScatter(ctx, c, send, recv, op) })
}

// AllGatherAsync is AllGather, returning at once.
func AllGatherAsync[T Elem](ctx context.Context, c *Comm, send, recv []T) *Work {
	return async(ctx, c, func(ctx context.Context) error { return AllGather(ctx, c, send, recv) })
}

// BroadcastAsync is Broadcast, returning at once.
func BroadcastAsync[T Elem](ctx context.Context, c *Comm, buf []T, root int) *Work {
	return async(ctx, c, func(ctx context.Context) error { return Broadcast(ctx, c, buf, root) })
}

// ReduceAsync is Reduce, returning at once.
func ReduceAsync[T Elem](ctx context.Context, c *Comm, send, recv []T, op Op, root int) *Work {
	return async(ctx, c, func(ctx context.Context) error { return Reduce(ctx, c, send, recv, op, root) })
}

// GatherAsync is Gather, returning at once.
func GatherAsync[T Elem](ctx context.Context, c *Comm, send, recv []T, root int) *Work {
	return async(ctx, c, func(ctx context.Context) error { return Gather(ctx, c, send, recv, root) })
}

// ScatterAsync is Scatter, returning at once.
func ScatterAsync[T Elem](ctx context.Context, c *Comm, send, recv []T, root int) *Work {
	return async(ctx, c, func(ctx context.Context) error { return Scatter(ctx, c, send, recv, root) })
}

// AllToAllAsync is AllToAll, returning at once.
func AllToAllAsync[T Elem](ctx context.Context, c *Comm, send, recv []T) *Work {
	return async(ctx, c, func(ctx context.Context) error { return AllToAll(ctx, c, send, recv) })
}

// BarrierAsync is Barrier, returning at once.
func BarrierAsync(ctx context.Context, c *Comm) *Work {
	return async(ctx, c, func(ctx context.Context) error { return Barrier(ctx, c) })
}
