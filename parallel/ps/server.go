package ps

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/parallel"
)

// Server holds one slice of the model (see Layout) and its optimizer
// state, applies the workers' pushes and answers their pulls. It serves
// from the moment NewServer returns; Serve waits until the job ends.
type Server struct {
	*job
	index int
	log   *slog.Logger
	opt   Optimizer
	links []*serverLink // by worker

	// The server's vector is cut into chunks (Options.ChunkBytes), each
	// received, applied and sent on its own.
	chunkLen, chunks int

	mu      sync.Mutex
	applied *sync.Cond // a chunk was applied (a buffer is free), or the server failed or lost a worker
	data    []float32
	state   []float32
	sum     []float32 // Sync: the step's average
	steps   []int     // by chunk: optimizer updates so far
	clocks  []int64   // whole pushes received, by worker
	// busy[w][k] says links[w].grad holds a chunk k not applied yet (under
	// Sync: maybe waiting for the others'); arrived[k] counts the workers
	// whose chunk k of the step is in (Sync).
	busy    [][]bool
	arrived []int
	// Async and SSP: taken[w][k] is how many of worker w's pushes chunk k
	// has taken (a PushPull's answer waits for its own push).
	taken    [][]int64
	lost     []bool
	finished []bool
	left     int // workers neither finished nor lost
	err      error
	failed   chan struct{} // closed with err set
	done     chan struct{} // closed when every worker has finished or been lost
	closed   bool

	wg sync.WaitGroup // the links' goroutines
}

// serverLink is the server's side of its pair with one worker.
type serverLink struct {
	worker, rank int
	comm         *collective.Comm
	grad         []float32 // the push being received
	values       []float32 // the snapshot a pull's answer sends
	hdrIn        []int64
	hdrOut       []int64
	pulls        chan int64    // clocks of pulls to answer, in order
	events       chan event    // read's to apply, in order
	received     int64         // pushes read has received (read's own)
	notify       chan struct{} // the server's state changed: look again
	bye          chan struct{} // the worker said bye: answer it
	stop         chan struct{} // the worker is lost: stop
}

// NewServer makes this rank (one of ranks 0 .. opts.Servers−1) a server of
// a parameter-server job over world. It is a collective call: every rank
// of world calls NewServer or NewWorker (as its rank says) with the same
// options and the same parameter names and lengths, in the same order.
// Servers only read the names and lengths: the initial values come from
// the first worker's params.
//
// The server starts serving at once; call Serve to wait for the end of the
// job, and Close when done. world is used only while the job is set up.
func NewServer(ctx context.Context, world *collective.Comm, params []*parallel.Param, opts Options) (*Server, error) {
	j, err := setup(ctx, world, params, opts, true)
	if err != nil {
		return nil, err
	}
	idx := world.Rank()
	n := j.layout.size(idx)
	s := &Server{
		job: j, index: idx, log: opts.logger().With("ps_server", idx, "rank", world.Rank()), opt: opts.Optimizer,
		chunkLen: opts.chunkLen(), chunks: chunks(n, opts.chunkLen()),
		data:     make([]float32, n),
		state:    make([]float32, opts.Optimizer.StateLen(n)),
		clocks:   make([]int64, j.workers),
		busy:     make([][]bool, j.workers),
		taken:    make([][]int64, j.workers),
		lost:     make([]bool, j.workers),
		finished: make([]bool, j.workers),
		left:     j.workers,
		failed:   make(chan struct{}),
		done:     make(chan struct{}),
	}
	s.applied = sync.NewCond(&s.mu)
	s.steps, s.arrived = make([]int, s.chunks), make([]int, s.chunks)
	for w := range j.workers {
		s.busy[w], s.taken[w] = make([]bool, s.chunks), make([]int64, s.chunks)
	}
	if opts.Consistency.kind == syncKind {
		s.sum = make([]float32, n)
	}
	// The first worker sends every server its initial values before
	// anything else on the pair.
	if err := collective.Recv(ctx, j.pairs[0], s.data, 1, tagInit); err != nil {
		closeAll(j.pairs)
		return nil, fmt.Errorf("ps: server %d: receiving the initial values: %w", idx, &WorkerError{Worker: 0, Rank: j.servers, Err: err})
	}
	s.links = make([]*serverLink, j.workers)
	for w := range j.workers {
		s.links[w] = &serverLink{
			worker: w, rank: j.servers + w, comm: j.pairs[w],
			grad: make([]float32, n), values: make([]float32, n),
			hdrIn: make([]int64, workerHeaderLen), hdrOut: make([]int64, serverHeaderLen(j.workers)),
			pulls: make(chan int64, 2), notify: make(chan struct{}, 1), events: make(chan event, s.chunks+2),
			bye: make(chan struct{}), stop: make(chan struct{}),
		}
	}
	s.wg.Add(1)
	go s.abortOnFailure()
	for _, l := range s.links {
		s.wg.Add(3)
		go s.read(l)
		go s.apply(l)
		go s.write(l)
	}
	return s, nil
}

// Serve waits until every worker has closed (nil), or the server fails:
// a worker is lost (unless AllowWorkerLoss, and not under Sync), a worker
// breaks the protocol, or ctx ends. A failure aborts the server's pairs,
// so that every worker's next or current call fails naming this server
// and the cause. Serve does not close the Server.
func (s *Server) Serve(ctx context.Context) error {
	select {
	case <-s.done:
	case <-s.failed:
	case <-ctx.Done():
		s.fail(s.named(context.Cause(ctx)))
	}
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close stops the server (failing it if workers are still at work, which
// makes them fail) and closes its pairs; the workers of a failed server
// still read why it failed (a closed communicator's abort notice goes
// before its connections close). It is idempotent; it does not close the
// world communicator.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	select {
	case <-s.done:
	default:
		s.fail(s.named(ErrClosed))
	}
	s.wg.Wait()
	closeAll(s.pairs)
	return nil
}

// ServerStatus is a snapshot of a server.
type ServerStatus struct {
	Server, Rank int
	// Updates is how many optimizer updates the server has applied to all
	// of its slice (under Sync, the steps).
	Updates int
	// Clocks is every worker's clock (pushes received), by worker index;
	// worker i is rank Servers+i.
	Clocks []int
	// Lost and Finished list the workers (by index) lost and closed.
	Lost, Finished []int
	Err            error
}

// Status returns a snapshot of the server; it may be called at any time,
// from any goroutine.
func (s *Server) Status() ServerStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := ServerStatus{Server: s.index, Rank: s.world.Rank(), Updates: slices.Min(s.steps), Clocks: make([]int, len(s.clocks)), Err: s.err}
	for w, c := range s.clocks {
		st.Clocks[w] = int(c)
		if s.lost[w] {
			st.Lost = append(st.Lost, w)
		}
		if s.finished[w] {
			st.Finished = append(st.Finished, w)
		}
	}
	return st
}

// Values copies the server's slice of the parameters into dst (Layout says
// which elements it holds): for tests and checkpoints.
func (s *Server) Values(dst []float32) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return copy(dst, s.data)
}

// event is what read hands apply: a chunk received, or the bye.
type event struct {
	kind  int64 // kindPush (a chunk received) or kindBye
	clock int64
	chunk int
}

// read receives everything worker l sends, in order, and hands pushes'
// chunks to apply as they arrive, so that the next chunk is received while
// the last is applied; pulls go to write's queue.
func (s *Server) read(l *serverLink) {
	defer s.wg.Done()
	bg := context.Background()
	for {
		if err := collective.Recv(bg, l.comm, l.hdrIn, 1, tagHeader); err != nil {
			s.workerLost(l, err)
			return
		}
		kind, clock := l.hdrIn[0], l.hdrIn[1]
		switch kind {
		case kindKeepAlive:
		case kindPush, kindPushPull:
			if clock != l.received+1 {
				s.fail(s.named(s.workerError(l, fmt.Errorf("protocol error: push number %d arrived as number %d", clock, l.received+1))))
				return
			}
			// A PushPull's answer may start as soon as its first chunk is
			// applied (write waits for that).
			if kind == kindPushPull && !s.queuePull(l, clock) {
				return
			}
			for k := range s.chunks {
				if !s.waitChunkFree(l, k) {
					return
				}
				lo, hi := chunkRange(k, len(s.data), s.chunkLen)
				if err := collective.Recv(bg, l.comm, l.grad[lo:hi], 1, tagGrad); err != nil {
					s.workerLost(l, err)
					return
				}
				if !s.hand(l, event{kind: kindPush, clock: clock, chunk: k}) {
					return
				}
			}
			l.received = clock
		case kindPull:
			if clock != l.received {
				s.fail(s.named(s.workerError(l, fmt.Errorf("protocol error: a pull at clock %d after %d pushes", clock, l.received))))
				return
			}
			if !s.queuePull(l, clock) {
				return
			}
		case kindBye:
			s.hand(l, event{kind: kindBye, clock: clock})
			return
		default:
			s.fail(s.named(s.workerError(l, fmt.Errorf("protocol error: a message of kind %d", kind))))
			return
		}
	}
}

// hand gives apply an event; false if the server failed or lost l.
func (s *Server) hand(l *serverLink, e event) bool {
	select {
	case l.events <- e:
		return true
	case <-s.failed:
	case <-l.stop:
	}
	return false
}

// waitChunkFree waits until worker l's previous chunk k has been applied
// (under Sync: the whole step's chunk k), so that its buffer may take the
// next, and marks it taken; false if the server failed.
func (s *Server) waitChunkFree(l *serverLink, k int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.busy[l.worker][k] && s.err == nil && !s.lost[l.worker] {
		s.applied.Wait()
	}
	s.busy[l.worker][k] = true
	return s.err == nil && !s.lost[l.worker]
}

func (s *Server) queuePull(l *serverLink, clock int64) bool {
	select {
	case l.pulls <- clock:
		return true
	case <-s.failed:
		return false
	}
}

// apply applies worker l's pushes, chunk by chunk, in the order read
// received them, and its bye.
func (s *Server) apply(l *serverLink) {
	defer s.wg.Done()
	for {
		var e event
		select {
		case e = <-l.events:
		case <-s.failed:
			return
		case <-l.stop:
			return
		}
		var err error
		switch e.kind {
		case kindPush:
			err = s.applyChunk(l, e.chunk, e.clock)
		case kindBye:
			if err = s.finish(l, e.clock); err == nil {
				close(l.bye)
				return
			}
		}
		if err != nil {
			s.fail(err)
			return
		}
	}
}

// applyChunk takes chunk k of worker l's push number clock (now in l.grad).
func (s *Server) applyChunk(l *serverLink, k int, clock int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := l.worker
	lo, hi := chunkRange(k, len(s.data), s.chunkLen)
	slo, shi := s.opt.StateLen(lo), s.opt.StateLen(hi)
	if k == s.chunks-1 {
		// The push is complete: its clock counts from now on.
		s.clocks[w] = clock
		if s.opts.Consistency.kind == sspKind {
			s.notifyAll() // the slowest clock may have moved
		}
	}
	if s.opts.Consistency.kind != syncKind {
		s.steps[k]++
		if err := s.opt.Update(s.steps[k], s.data[lo:hi], l.grad[lo:hi], s.state[slo:shi]); err != nil {
			return s.named(fmt.Errorf("update %d: %w", s.steps[k], err))
		}
		s.taken[w][k] = clock
		s.busy[w][k] = false
		s.applied.Broadcast()
		notify(l) // its PushPull's answer may wait for this
		return nil
	}
	if k == 0 {
		for v, done := range s.finished {
			if done && s.clocks[v] < clock && v != w {
				return s.named(s.workerError(l, fmt.Errorf("pushed step %d, but worker %d (rank %d) closed after step %d: under Sync every worker takes every step",
					clock, v, s.servers+v, s.clocks[v])))
			}
		}
	}
	s.arrived[k]++
	if s.arrived[k] < s.workers {
		return nil
	}
	// Every worker's chunk is in: the sum in worker order, then the
	// division, as collective.Avg does it (sum, then divide by the count).
	sum := s.sum[lo:hi]
	copy(sum, s.links[0].grad[lo:hi])
	for _, o := range s.links[1:] {
		for i, g := range o.grad[lo:hi] {
			sum[i] += g
		}
	}
	n := float32(s.workers)
	for i := range sum {
		sum[i] /= n
	}
	s.steps[k]++
	if err := s.opt.Update(s.steps[k], s.data[lo:hi], sum, s.state[slo:shi]); err != nil {
		return s.named(fmt.Errorf("step %d: %w", s.steps[k], err))
	}
	for v := range s.busy {
		s.busy[v][k] = false
	}
	s.arrived[k] = 0
	s.applied.Broadcast()
	s.notifyAll()
	return nil
}

// notify tells l's writer to look at the state again.
func notify(l *serverLink) {
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// notifyAll tells every writer to look at the state again (mu held).
func (s *Server) notifyAll() {
	for _, l := range s.links {
		notify(l)
	}
}

// readable says whether chunk k of the answer to worker w's pull at clock
// may be sent now (mu held).
func (s *Server) readable(w, k int, clock int64) bool {
	switch s.opts.Consistency.kind {
	case syncKind:
		return int64(s.steps[k]) >= clock
	case sspKind:
		bound := clock - int64(s.opts.Consistency.staleness)
		for v, c := range s.clocks {
			if c < bound && !s.lost[v] && !s.finished[v] {
				return false
			}
		}
	}
	return s.taken[w][k] >= clock
}

// finish records worker l's bye, sent after clock pushes.
func (s *Server) finish(l *serverLink, clock int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := l.worker
	if clock != s.clocks[w] {
		return s.named(s.workerError(l, fmt.Errorf("protocol error: closed after %d pushes, the server received %d", clock, s.clocks[w])))
	}
	if s.opts.Consistency.kind == syncKind {
		for v, c := range s.clocks {
			if c > clock {
				return s.named(s.workerError(l, fmt.Errorf("closed after step %d, but worker %d (rank %d) has pushed step %d: under Sync every worker takes every step",
					clock, v, s.servers+v, c)))
			}
		}
	}
	s.finished[w] = true
	s.leave()
	return nil
}

// leave counts a worker out; the last one ends the job (mu held).
func (s *Server) leave() {
	s.left--
	s.notifyAll() // the slowest clock may have moved
	if s.left > 0 {
		return
	}
	for _, f := range s.finished {
		if f {
			close(s.done)
			return
		}
	}
	s.failLocked(s.named(ErrAllWorkersLost))
}

// workerLost handles a failed receive or send on worker l's pair.
func (s *Server) workerLost(l *serverLink, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || s.lost[l.worker] || s.finished[l.worker] {
		return // the failure is ours, or already known
	}
	lerr := s.workerError(l, err)
	if !s.opts.AllowWorkerLoss {
		s.failLocked(s.named(lerr))
		return
	}
	s.log.Warn("ps: lost a worker; serving the others (AllowWorkerLoss)", "err", lerr)
	s.lost[l.worker] = true
	s.applied.Broadcast()
	close(l.stop)
	l.comm.Abort(lerr)
	s.leave()
}

// workerError names worker l (mu held).
func (s *Server) workerError(l *serverLink, err error) *WorkerError {
	return &WorkerError{Worker: l.worker, Rank: l.rank, Clock: int(s.clocks[l.worker]), Err: err}
}

func (s *Server) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failLocked(err)
}

// failLocked fails the server once (mu held); abortOnFailure then aborts
// every pair with err, which each worker reports.
func (s *Server) failLocked(err error) {
	if s.err != nil {
		return
	}
	s.err = err
	close(s.failed)
	s.applied.Broadcast()
}

// named prefixes err with this server's name.
func (s *Server) named(err error) error {
	return fmt.Errorf("ps: server %d (rank %d): %w", s.index, s.world.Rank(), err)
}

// abortOnFailure aborts every pair with the server's error when it fails,
// so that each worker's current or next call reports it; it ends when the
// job does.
func (s *Server) abortOnFailure() {
	defer s.wg.Done()
	select {
	case <-s.failed:
		for _, c := range s.pairs {
			c.Abort(s.err) // another pair's failure it wraps is passed on as this server's reason
		}
	case <-s.done:
	}
}

// write sends worker l the answers to its pulls, in order, each chunk once
// the consistency model allows; keep-alives (with the clocks) when idle;
// and the final bye.
func (s *Server) write(l *serverLink) {
	defer s.wg.Done()
	bg := context.Background()
	keepAlive := time.NewTimer(s.opts.keepAlive())
	defer keepAlive.Stop()
	send := func(buf []int64) bool {
		if err := collective.Send(bg, l.comm, buf, 1, tagHeader); err != nil {
			s.workerLost(l, err)
			return false
		}
		keepAlive.Reset(s.opts.keepAlive())
		return true
	}
	header := func(kind int64) { // mu held
		l.hdrOut[0], l.hdrOut[1] = kind, int64(slices.Min(s.steps))
		copy(l.hdrOut[2:], s.clocks)
	}
	keepAliveNow := func() bool {
		s.mu.Lock()
		header(kindKeepAlive)
		s.mu.Unlock()
		return send(l.hdrOut)
	}
	for {
		select {
		case clock := <-l.pulls:
			if !s.answer(l, clock, keepAlive.C, keepAliveNow, header) {
				return
			}
			keepAlive.Reset(s.opts.keepAlive())
		case <-keepAlive.C:
			if !keepAliveNow() {
				return
			}
		case <-l.bye:
			// The worker waits for its pulls before it says bye: none is
			// queued now.
			s.mu.Lock()
			header(kindBye)
			s.mu.Unlock()
			// The bye is the pair's last message: the worker closes its
			// side once it has it, which does not fail a Send the
			// connection took.
			send(l.hdrOut)
			return
		case <-s.failed:
			return
		case <-l.stop:
			return
		}
	}
}

// answer sends the answer to worker l's pull at clock: the header once the
// first chunk may go (keep-alives until then), then each chunk as soon as
// it may. False if the server failed or lost the worker.
func (s *Server) answer(l *serverLink, clock int64, keepAlive <-chan time.Time, keepAliveNow func() bool, header func(int64)) bool {
	bg := context.Background()
	for k := range s.chunks {
		lo, hi := chunkRange(k, len(s.data), s.chunkLen)
		for {
			s.mu.Lock()
			ok := s.readable(l.worker, k, clock)
			if ok {
				copy(l.values[lo:hi], s.data[lo:hi])
				if k == 0 {
					header(kindValues)
				}
			}
			s.mu.Unlock()
			if ok {
				break
			}
			tick := keepAlive
			if k > 0 {
				tick = nil // mid-answer: the worker waits for values, not headers
			}
			select {
			case <-l.notify:
			case <-tick:
				if !keepAliveNow() {
					return false
				}
			case <-s.failed:
				return false
			case <-l.stop:
				return false
			}
		}
		var err error
		if k == 0 {
			err = collective.Send(bg, l.comm, l.hdrOut, 1, tagHeader)
		}
		if err == nil {
			err = collective.Send(bg, l.comm, l.values[lo:hi], 1, tagValues)
		}
		if err != nil {
			s.workerLost(l, err)
			return false
		}
	}
	return true
}
