package shard

import (
	"context"

	"github.com/ringo-ml/ringo/collective"
)

// A worker issues one communicator's collectives in the order they were
// queued, on its own goroutine: gathers and reductions run in the
// background while the caller computes, and as every rank queues the same
// calls in the same order (FSDP's methods are called in the same order on
// every rank), every rank issues the same sequence. The communicator is
// private to the FSDP (a Split of the caller's), so no call of the caller's
// can slip in between.
//
// Queuing and completing a call allocate nothing: a request is a value on
// a buffered channel, and each call's completion goes to a channel owned by
// the op that waits for it.
type worker struct {
	comm   *collective.Comm
	queue  chan request
	exited chan struct{}
}

type requestKind uint8

const (
	allGather     requestKind = iota + 1
	reduceScatter             // Avg
	allReduce                 // Avg
)

func (k requestKind) String() string {
	switch k {
	case allGather:
		return "AllGather"
	case reduceScatter:
		return "ReduceScatter"
	}
	return "AllReduce"
}

type request struct {
	ctx        context.Context
	kind       requestKind
	send, recv []float32
	// then, if set, all-reduces recv on another worker's communicator once
	// this call has succeeded (Hybrid's reduction across groups); that
	// call reports to done.
	then *worker
	done chan error
}

// newWorker starts a worker with room for queued calls; queuing more than
// that blocks until the worker catches up.
func newWorker(comm *collective.Comm, room int) *worker {
	w := &worker{comm: comm, queue: make(chan request, room), exited: make(chan struct{})}
	go w.serve()
	return w
}

func (w *worker) serve() {
	defer close(w.exited)
	for r := range w.queue {
		var err error
		switch r.kind {
		case allGather:
			err = collective.AllGather(r.ctx, w.comm, r.send, r.recv)
		case reduceScatter:
			err = collective.ReduceScatter(r.ctx, w.comm, r.send, r.recv, collective.Avg)
		case allReduce:
			err = collective.AllReduce(r.ctx, w.comm, r.recv, collective.Avg)
		}
		if err == nil && r.then != nil {
			r.then.queue <- request{ctx: r.ctx, kind: allReduce, recv: r.recv, done: r.done}
			continue
		}
		r.done <- err
	}
}

// stop ends the worker once every queued call has run (a chained worker
// must be stopped after the one that feeds it).
func (w *worker) stop() {
	close(w.queue)
	<-w.exited
}

// op is one call in flight on a worker, waited for once.
type op struct {
	done chan error // capacity 1: the worker never blocks on it
	busy bool
}

func newOp() op { return op{done: make(chan error, 1)} }

// issue queues r on w with o as its completion. o must not be busy.
func (o *op) issue(w *worker, r request) {
	r.done = o.done
	o.busy = true
	w.queue <- r
}
