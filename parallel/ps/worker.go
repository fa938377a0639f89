package ps

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/parallel"
)

// Worker pushes its gradients to the servers and pulls the parameters'
// values from them. Its methods are called from one goroutine.
//
// A worker's clock is the number of pushes it has made. Under Sync a Pull
// at clock c returns the values after update c; under BoundedStaleness(s)
// it waits until every worker has reached clock c − s; under Async it
// returns the values as they are.
type Worker struct {
	*job
	index  int
	params []*parallel.Param
	links  []*workerLink // by server
	chunks []int         // by server: the chunks of its slice (Options.ChunkBytes)
	clock  atomic.Int64  // written by the caller's goroutine, read by Status too
	// push is the Work of the pushes (and of the push half of PushPull):
	// the next push waits for it before it refills the buffers. pull is
	// the Work of the pulls and PushPulls.
	push, pull *Work

	mu     sync.Mutex
	err    error
	failed chan struct{}
	clocks []int64 // every worker's clock, the highest any server reported
	closed bool

	wg sync.WaitGroup
}

// workerLink is the worker's side of its pair with one server.
type workerLink struct {
	server int
	comm   *collective.Comm
	grads  []float32 // the server's share of the gradients, as pushed
	values []float32 // the server's share of the values, as pulled
	hdrOut []int64
	hdrIn  []int64
	reqs   chan request
}

type request struct {
	kind  int64
	clock int64
}

// NewWorker makes this rank (one of ranks opts.Servers .. Size−1) a worker
// of a parameter-server job over world; see NewServer. params are the
// model's parameters (the same names and lengths on every rank). The first
// worker's values initialise the servers; NewWorker then pulls them, so
// every worker starts from the same values.
func NewWorker(ctx context.Context, world *collective.Comm, params []*parallel.Param, opts Options) (*Worker, error) {
	j, err := setup(ctx, world, params, opts, false)
	if err != nil {
		return nil, err
	}
	w := &Worker{
		job: j, index: world.Rank() - j.servers, params: params,
		failed: make(chan struct{}),
		clocks: make([]int64, j.workers),
	}
	w.push, w.pull = newWork(w), newWork(w)
	w.links = make([]*workerLink, j.servers)
	w.chunks = make([]int, j.servers)
	for s := range j.servers {
		n := j.layout.size(s)
		w.chunks[s] = chunks(n, opts.chunkLen())
		w.links[s] = &workerLink{
			server: s, comm: j.pairs[s],
			grads: make([]float32, n), values: make([]float32, n),
			hdrOut: make([]int64, workerHeaderLen), hdrIn: make([]int64, serverHeaderLen(j.workers)),
			reqs: make(chan request, 4),
		}
	}
	if w.index == 0 {
		for _, l := range w.links {
			j.layout.gather(l.server, params, data, l.values)
			if err := collective.Send(ctx, l.comm, l.values, 0, tagInit); err != nil {
				closeAll(j.pairs)
				return nil, w.named(&ServerError{Server: l.server, Rank: l.server, Err: fmt.Errorf("sending the initial values: %w", err)})
			}
		}
	}
	for _, l := range w.links {
		w.wg.Add(2)
		go w.read(l)
		go w.write(l)
	}
	if err := w.Pull(ctx).Wait(); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// Push sends every parameter's Grad to the servers. The gradients are
// copied before Push returns, so Grad may be overwritten at once; Wait
// returns once they are handed to the connections. Push first waits for
// the previous push.
func (w *Worker) Push(ctx context.Context) *Work {
	w.push.start(ctx, w.servers)
	if err := w.check(); err != nil {
		w.push.failAll(err)
		return w.push
	}
	clock := w.clock.Add(1)
	for _, l := range w.links {
		w.layout.gather(l.server, w.params, grad, l.grads)
		w.request(l, request{kindPush, clock})
	}
	return w.push
}

// Pull fetches every parameter's values into Data, as the consistency
// model allows at this worker's clock. Data must not be read until Wait
// returns. Pull first waits for the previous pull.
func (w *Worker) Pull(ctx context.Context) *Work {
	w.pull.start(ctx, w.servers)
	if err := w.check(); err != nil {
		w.pull.failAll(err)
		return w.pull
	}
	for _, l := range w.links {
		w.request(l, request{kindPull, w.clock.Load()})
	}
	return w.pull
}

// PushPull is Push then Pull in one round trip per server: each server
// answers the pull once it has taken the push (under Sync, once the step
// is complete). The Work is the pull's; Grad may be overwritten at once,
// Data must not be read until Wait returns.
func (w *Worker) PushPull(ctx context.Context) *Work {
	w.push.start(ctx, w.servers)
	w.pull.start(ctx, w.servers)
	if err := w.check(); err != nil {
		w.push.failAll(err)
		w.pull.failAll(err)
		return w.pull
	}
	clock := w.clock.Add(1)
	for _, l := range w.links {
		w.layout.gather(l.server, w.params, grad, l.grads)
		w.request(l, request{kindPushPull, clock})
	}
	return w.pull
}

// Clock is the number of pushes this worker has made.
func (w *Worker) Clock() int { return int(w.clock.Load()) }

// WorkerStatus is a snapshot of a worker.
type WorkerStatus struct {
	Worker, Rank int
	Clock        int // this worker's pushes
	// Clocks is every worker's clock, by worker index, the highest any
	// server reported (servers report with every answer and keep-alive).
	Clocks []int
	Err    error
}

// Status returns a snapshot of the worker; it may be called from any
// goroutine.
func (w *Worker) Status() WorkerStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := WorkerStatus{Worker: w.index, Rank: w.world.Rank(), Clocks: make([]int, len(w.clocks)), Err: w.err}
	for i, c := range w.clocks {
		st.Clocks[i] = int(c)
	}
	st.Clock = int(w.clock.Load())
	return st
}

// Close waits for the pushes and pulls in flight, tells the servers this
// worker is done, and closes its pairs (see Server.Close). It returns the error that failed the worker, if any.
// It is idempotent; it does not close the world communicator.
func (w *Worker) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.mu.Unlock()
	_ = w.push.Wait()
	_ = w.pull.Wait()
	w.mu.Lock()
	w.closed = true
	err := w.err
	w.mu.Unlock()
	if err == nil {
		for _, l := range w.links {
			w.request(l, request{kindBye, w.clock.Load()})
		}
	}
	w.wg.Wait() // the readers end at the servers' byes, or on failure
	closeAll(w.pairs)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// check returns the error that failed the worker, or ErrClosed.
func (w *Worker) check() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.err != nil:
		return w.err
	case w.closed:
		return w.named(ErrClosed)
	}
	return nil
}

func (w *Worker) request(l *workerLink, r request) {
	select {
	case l.reqs <- r:
	case <-w.failed:
	}
}

// named prefixes err with this worker's name.
func (w *Worker) named(err error) error {
	return fmt.Errorf("ps: worker %d (rank %d): %w", w.index, w.world.Rank(), err)
}

// fail fails the worker once: its operations in flight and every later
// call return err, and its pairs are aborted with it, so that the servers
// learn why.
func (w *Worker) fail(err error) {
	w.mu.Lock()
	if w.err != nil {
		w.mu.Unlock()
		return
	}
	w.err = err
	close(w.failed)
	w.mu.Unlock()
	for _, c := range w.pairs {
		c.Abort(err) // see Server.abortOnFailure
	}
	w.push.failAll(err)
	w.pull.failAll(err)
}

func (w *Worker) serverLost(l *workerLink, err error) {
	w.fail(w.named(&ServerError{Server: l.server, Rank: l.server, Err: err}))
}

// write sends server l this worker's requests in order, keep-alives when
// idle, and the bye.
func (w *Worker) write(l *workerLink) {
	defer w.wg.Done()
	bg := context.Background()
	keepAlive := time.NewTimer(w.opts.keepAlive())
	defer keepAlive.Stop()
	for {
		r := request{kind: kindKeepAlive}
		select {
		case r = <-l.reqs:
		case <-keepAlive.C:
		case <-w.failed:
			return
		}
		l.hdrOut[0], l.hdrOut[1] = r.kind, r.clock
		err := collective.Send(bg, l.comm, l.hdrOut, 0, tagHeader)
		if r.kind == kindPush || r.kind == kindPushPull {
			for k := 0; err == nil && k < w.chunks[l.server]; k++ {
				lo, hi := chunkRange(k, len(l.grads), w.opts.chunkLen())
				err = collective.Send(bg, l.comm, l.grads[lo:hi], 0, tagGrad)
			}
		}
		if err != nil {
			w.serverLost(l, err)
			return
		}
		if r.kind == kindPush || r.kind == kindPushPull {
			w.push.finish(nil)
		}
		if r.kind == kindBye {
			return
		}
		keepAlive.Reset(w.opts.keepAlive())
	}
}

// read receives everything server l sends: answers to pulls (scattered into
// the parameters' Data), keep-alives, the bye.
func (w *Worker) read(l *workerLink) {
	defer w.wg.Done()
	bg := context.Background()
	for {
		if err := collective.Recv(bg, l.comm, l.hdrIn, 0, tagHeader); err != nil {
			w.serverLost(l, err)
			return
		}
		w.mu.Lock()
		for i, c := range l.hdrIn[2:] {
			w.clocks[i] = max(w.clocks[i], c)
		}
		w.mu.Unlock()
		switch l.hdrIn[0] {
		case kindKeepAlive:
		case kindValues:
			for k := range w.chunks[l.server] {
				lo, hi := chunkRange(k, len(l.values), w.opts.chunkLen())
				if err := collective.Recv(bg, l.comm, l.values[lo:hi], 0, tagValues); err != nil {
					w.serverLost(l, err)
					return
				}
				w.layout.scatter(l.server, lo, hi, w.params, data, l.values)
			}
			w.pull.finish(nil)
		case kindBye:
			return
		default:
			w.serverLost(l, fmt.Errorf("protocol error: a message of kind %d", l.hdrIn[0]))
			return
		}
	}
}
