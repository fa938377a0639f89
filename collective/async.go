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

// ticketOf is the ticket an async call or an AllReducer took when it was
// issued (a *ticketCtx's), or, for a sync call, a new one.
func ticketOf(ctx context.Context, c *Comm) uint64 {
	if t, ok := ctx.Value(ticketKey{}).(*uint64); ok {
		return *t
	}
	return c.turn.take()
}

// Work is a call in flight, made by one of the *Async functions. Its
// methods may be called any number of times, from any goroutine, before
// and after the call ends.
//
// A Work is the one allocation of its call: it holds the call's arguments
// and context, and it is run by one of a few goroutines the communicator
// keeps for async calls, not by a goroutine of its own (see helpers).
type Work struct {
	finished sync.WaitGroup // Wait waits on it: no channel unless Done asks
	mu       sync.Mutex
	over     bool          // the call has ended (err is final)
	done     chan struct{} // made by the first Done
	err      error
	call     ticketCtx   // the context the call runs in, with its ticket
	job      asyncCaller // the call, typically the struct the Work is part of
}

// asyncCaller runs an async call in ctx (which carries its ticket).
type asyncCaller interface {
	runCall(ctx context.Context) error
}

// Wait waits for the call and returns its error.
func (w *Work) Wait() error {
	w.finished.Wait()
	return w.err
}

// Done is closed when the call has finished.
func (w *Work) Done() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done == nil {
		w.done = make(chan struct{})
		if w.over {
			close(w.done)
		}
	}
	return w.done
}

// issue readies w to run job once its turn comes: with ctx and ticket,
// the call's place in the issue order, taken now.
func (w *Work) issue(ctx context.Context, job asyncCaller, ticket uint64, p2p bool) {
	w.finished.Add(1)
	w.call = ticketCtx{Context: ctx, ticket: ticket, p2p: p2p}
	w.job = job
}

// execute runs the call and publishes its result.
func (w *Work) execute() { w.finish(w.job.runCall(&w.call)) }

func (w *Work) finish(err error) {
	w.err = err
	w.mu.Lock()
	w.over = true
	if w.done != nil {
		close(w.done)
	}
	w.mu.Unlock()
	w.finished.Done()
}

// failedWork is a Work whose call was refused before it took a place.
func failedWork(err error) *Work {
	w := &Work{}
	w.finished.Add(1)
	w.finish(err)
	return w
}

// What an async collective runs.
type asyncKind uint8

const (
	asyncAllReduce asyncKind = iota
	asyncReduceScatter
	asyncAllGather
	asyncBroadcast
	asyncReduce
	asyncGather
	asyncScatter
	asyncAllToAll
	asyncBarrier
	asyncAllGatherV
	asyncAllToAllV
)

// asyncCall is an async collective: its Work and the arguments of its
// synchronous twin, in one allocation.
type asyncCall[T Elem] struct {
	Work
	c                      *Comm
	kind                   asyncKind
	send, recv             []T // buf is send
	sendCounts, recvCounts []int
	op                     Op
	root                   int
}

func (a *asyncCall[T]) runCall(ctx context.Context) error {
	c := a.c
	switch a.kind {
	case asyncAllReduce:
		return AllReduce(ctx, c, a.send, a.op)
	case asyncReduceScatter:
		return ReduceScatter(ctx, c, a.send, a.recv, a.op)
	case asyncAllGather:
		return AllGather(ctx, c, a.send, a.recv)
	case asyncBroadcast:
		return Broadcast(ctx, c, a.send, a.root)
	case asyncReduce:
		return Reduce(ctx, c, a.send, a.recv, a.op, a.root)
	case asyncGather:
		return Gather(ctx, c, a.send, a.recv, a.root)
	case asyncScatter:
		return Scatter(ctx, c, a.send, a.recv, a.root)
	case asyncAllToAll:
		return AllToAll(ctx, c, a.send, a.recv)
	case asyncBarrier:
		return Barrier(ctx, c)
	case asyncAllGatherV:
		return AllGatherV(ctx, c, a.send, a.sendCounts, a.recv)
	}
	return AllToAllV(ctx, c, a.send, a.sendCounts, a.recv, a.recvCounts)
}

// async takes the next ticket now and hands the call to a helper goroutine,
// which runs it on its turn (every call is bounded by the communicator's
// timeout and by its abort).
func async[T Elem](ctx context.Context, a *asyncCall[T]) *Work {
	a.issue(ctx, a, a.c.turn.take(), false)
	a.c.helpers.run(&a.Work)
	return &a.Work
}

// helpers are the goroutines that run a communicator's async calls. A
// helper that finishes a call waits, idle, for the next one, so that a
// steady stream of async calls starts no goroutine (and allocates no
// closure for one); a new helper starts only when none is idle. At most
// maxIdleHelpers stay idle, and Close ends them.
type helpers struct {
	mu     sync.Mutex
	idle   []chan *Work // the inboxes of the idle helpers (one slot each)
	live   int          // helpers started and not ended
	closed bool
	ended  chan struct{} // made by close when helpers are live; the last closes it
}

// maxIdleHelpers bounds the goroutines a communicator keeps for async
// calls: as many as a training step usually has calls in flight.
const maxIdleHelpers = 8

// run has w executed by an idle helper, or a new one.
func (h *helpers) run(w *Work) {
	h.mu.Lock()
	if h.closed {
		// After Close the call fails at once: a goroutine of its own.
		h.mu.Unlock()
		go w.execute()
		return
	}
	if n := len(h.idle); n > 0 {
		inbox := h.idle[n-1]
		h.idle = h.idle[:n-1]
		h.mu.Unlock()
		inbox <- w
		return
	}
	h.live++
	h.mu.Unlock()
	go h.serve(w)
}

func (h *helpers) serve(w *Work) {
	var inbox chan *Work
	for {
		w.execute()
		h.mu.Lock()
		if h.closed || len(h.idle) >= maxIdleHelpers {
			h.exit()
			return
		}
		if inbox == nil {
			inbox = make(chan *Work, 1)
		}
		h.idle = append(h.idle, inbox)
		h.mu.Unlock()
		if w = <-inbox; w == nil { // closed by close
			h.mu.Lock()
			h.exit()
			return
		}
	}
}

// exit ends a helper (h.mu held; exit unlocks it).
func (h *helpers) exit() {
	h.live--
	if h.live == 0 && h.ended != nil {
		close(h.ended)
	}
	h.mu.Unlock()
}

// close ends the idle helpers and waits for the busy ones to finish their
// calls and end. Calls issued later run on goroutines of their own.
func (h *helpers) close() {
	h.mu.Lock()
	h.closed = true
	for _, inbox := range h.idle {
		close(inbox)
	}
	h.idle = nil
	var ended chan struct{}
	if h.live > 0 {
		h.ended = make(chan struct{})
		ended = h.ended
	}
	h.mu.Unlock()
	if ended != nil {
		<-ended
	}
}

// AllReduceAsync is AllReduce, returning at once; buf must not be touched
// until the Work is done.
func AllReduceAsync[T Elem](ctx context.Context, c *Comm, buf []T, op Op) *Work {
	return async(ctx, &asyncCall[T]{c: c, kind: asyncAllReduce, send: buf, op: op})
}

// ReduceScatterAsync is ReduceScatter, returning at once.
func ReduceScatterAsync[T Elem](ctx context.Context, c *Comm, send, recv []T, op Op) *Work {
	return async(ctx, &asyncCall[T]{c: c, kind: asyncReduceScatter, send: send, recv: recv, op: op})
}

// AllGatherAsync is AllGather, returning at once.
func AllGatherAsync[T Elem](ctx context.Context, c *Comm, send, recv []T) *Work {
	return async(ctx, &asyncCall[T]{c: c, kind: asyncAllGather, send: send, recv: recv})
}

// BroadcastAsync is Broadcast, returning at once.
func BroadcastAsync[T Elem](ctx context.Context, c *Comm, buf []T, root int) *Work {
	return async(ctx, &asyncCall[T]{c: c, kind: asyncBroadcast, send: buf, root: root})
}

// ReduceAsync is Reduce, returning at once.
func ReduceAsync[T Elem](ctx context.Context, c *Comm, send, recv []T, op Op, root int) *Work {
	return async(ctx, &asyncCall[T]{c: c, kind: asyncReduce, send: send, recv: recv, op: op, root: root})
}

// GatherAsync is Gather, returning at once.
func GatherAsync[T Elem](ctx context.Context, c *Comm, send, recv []T, root int) *Work {
	return async(ctx, &asyncCall[T]{c: c, kind: asyncGather, send: send, recv: recv, root: root})
}

// ScatterAsync is Scatter, returning at once.
func ScatterAsync[T Elem](ctx context.Context, c *Comm, send, recv []T, root int) *Work {
	return async(ctx, &asyncCall[T]{c: c, kind: asyncScatter, send: send, recv: recv, root: root})
}

// AllToAllAsync is AllToAll, returning at once.
func AllToAllAsync[T Elem](ctx context.Context, c *Comm, send, recv []T) *Work {
	return async(ctx, &asyncCall[T]{c: c, kind: asyncAllToAll, send: send, recv: recv})
}

// BarrierAsync is Barrier, returning at once.
func BarrierAsync(ctx context.Context, c *Comm) *Work {
	return async(ctx, &asyncCall[uint8]{c: c, kind: asyncBarrier})
}
