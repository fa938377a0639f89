// Package ps is a parameter server: the first S ranks of a communicator
// hold the model, sliced across them, and apply the optimizer; the other
// ranks are workers that compute gradients, push them to the servers and
// pull the parameters back (ps-lite's KVWorker and KVServer, TensorFlow's
// ParameterServerStrategy, BytePS).
//
//	opts := ps.Options{Servers: 2, Consistency: ps.Sync, Optimizer: &nn.SGD{LR: 0.1, Momentum: 0.9}}
//	if comm.Rank() < opts.Servers {
//		srv, err := ps.NewServer(ctx, comm, params, opts)
//		...
//		err = srv.Serve(ctx) // until every worker has closed
//		srv.Close()
//		return err
//	}
//	w, err := ps.NewWorker(ctx, comm, params, opts)
//	for step := range steps {
//		computeGradients(params)              // into every p.Grad
//		if err := w.PushPull(ctx).Wait(); err != nil { ... }
//	}                                         // every p.Data is the servers' values
//	err = w.Close()
//
// # Layout
//
// Layout (the key slicer) lays the parameters end to end and gives each
// server a contiguous Ψ/S of the elements, splitting big parameters across
// servers, so that every server moves the same number of bytes. A push or
// a pull to a server goes in chunks of Options.ChunkBytes (4 MiB, as
// BytePS partitions), each applied and answered on its own: a Sync step
// overlaps the pull of chunk k with the push of chunk k+1 instead of
// pushing everything, then pulling everything.
//
// # Consistency
//
// Sync averages every worker's gradient (summed in worker order, then
// divided by the number of workers, as collective.Avg does) and applies
// the optimizer once per step: the same numbers as data parallelism with
// an AllReduce. Async applies each push as it arrives, as pushed (scale the
// gradients as the learning rate needs). BoundedStaleness(s) applies pushes
// as Async does but holds a worker's Pull until the slowest worker is at
// most s clocks behind it. Under Async and BoundedStaleness an answer's
// chunks are read one by one as they go out, so they may include
// different numbers of the other workers' pushes (never fewer of the
// puller's own than it has made).
//
// # Failures
//
// Each server and worker talk over a communicator of their own (made by
// splitting the job's communicator), and each side always waits for the
// other's next message, with keep-alives when there is nothing to say. So a
// lost server fails every worker's current or next call at once (the
// error, a *ServerError, names it), and a lost worker fails every server
// (a *WorkerError names it, and the servers then abort their other pairs
// so that every worker learns why) — unless the job runs Async or
// BoundedStaleness with AllowWorkerLoss, when the servers log the loss,
// drop the worker from the slowest clock and serve the others. The job's
// own communicator aborts whenever any rank is lost (that is collective's
// failure model); the package stops using it once the job is set up, so
// the pairs of the ranks still alive keep working. Status, on servers and
// workers, tells every worker's clock.
package ps
