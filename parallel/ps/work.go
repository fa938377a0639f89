package ps

import (
	"context"
	"sync"
)

// Work is a Push, Pull or PushPull in flight. A worker has one Work for
// its pushes and one for its pulls, reused by every call, so a step
// allocates nothing: wait for a Work before the next call of its kind
// (the next call waits for it anyway).
type Work struct {
	w *Worker

	mu      sync.Mutex
	ctx     context.Context
	pending int   // servers not done yet
	err     error // the first error
	// done holds one token while the Work is done: Wait takes it and puts
	// it back, so that any number of Waits return.
	done chan struct{}
}

func newWork(w *Worker) *Work {
	wk := &Work{w: w, ctx: context.Background(), done: make(chan struct{}, 1)}
	wk.done <- struct{}{} // nothing in flight: done
	return wk
}

// start begins a new operation on servers servers; the previous one must be
// done (the caller has waited for it).
func (wk *Work) start(ctx context.Context, servers int) {
	<-wk.done
	wk.mu.Lock()
	wk.ctx, wk.pending, wk.err = ctx, servers, nil
	wk.mu.Unlock()
}

// finish records that one server's part is done (err nil) or failed.
func (wk *Work) finish(err error) {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	if wk.pending == 0 {
		return
	}
	if err != nil && wk.err == nil {
		wk.err = err
	}
	wk.pending--
	if wk.pending == 0 {
		wk.done <- struct{}{}
	}
}

// failAll ends an operation in flight with err.
func (wk *Work) failAll(err error) {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	if wk.pending == 0 {
		return
	}
	if wk.err == nil {
		wk.err = err
	}
	wk.pending = 0
	wk.done <- struct{}{}
}

// Wait waits until the operation is done on every server and returns its
// error. If the context the call was made with ends first, the worker
// fails (its servers can no longer know what it has sent) and Wait
// returns the context's cause.
func (wk *Work) Wait() error {
	wk.mu.Lock()
	ctx := wk.ctx
	wk.mu.Unlock()
	select {
	case <-wk.done:
	case <-ctx.Done():
		wk.w.fail(context.Cause(ctx))
		<-wk.done // failAll
	}
	wk.mu.Lock()
	err := wk.err
	wk.mu.Unlock()
	wk.done <- struct{}{}
	return err
}
