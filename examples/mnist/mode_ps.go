package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/ps"
)

// psTrainer is parameter-server training (-mode ps): ranks 0 .. -servers−1
// hold the model, sliced across them, and apply the -optimizer; the other
// ranks are workers. Each worker computes the gradient of its share of the
// global batch and PushPulls it; under -consistency async (the default)
// each push is one update of its own, under sync the servers average a
// step's pushes (what ddp computes), under ssp:K a worker reads at most K
// clocks ahead of the slowest.
//
// A server's step does nothing: it serves in the background. The loss and
// accuracy sums include the servers (adding zero), so every rank makes the
// same collective calls on the job's communicator.
type psTrainer struct {
	*replica // workers train it; servers only take its parameter list
	comm     *collective.Comm
	workers  int
	worker   *ps.Worker // nil on servers
	server   *ps.Server // nil on workers
	serve    chan error // the server's Serve result
	total    []float64
	count    []int64
}

// psMode is -mode ps's flags.
type psMode struct {
	servers     int
	consistency string
}

func (m *psMode) flags(fs *flag.FlagSet) {
	fs.IntVar(&m.servers, "servers", 1, "ps: how many of the -np ranks are servers (the first ones)")
	fs.StringVar(&m.consistency, "consistency", "async", "ps: async, sync or ssp:K (bounded staleness K)")
}

func (m *psMode) check(o *options) []error {
	var c checker
	c.check(o.mode != "ps" || m.servers >= 1 && (!o.npSet || m.servers < o.np), "-servers %d: want 1 or more, leaving at least one worker of the -np ranks", m.servers)
	c.check(o.mode != "ps" || o.checkpoint == "", "-checkpoint: -mode ps does not save checkpoints")
	return c
}

func (m *psMode) newTrainer(ctx context.Context, j *job) (trainer, error) { return newPS(ctx, j, m) }

func newPS(ctx context.Context, j *job, m *psMode) (*psTrainer, error) {
	if j.comm == nil {
		return nil, fmt.Errorf("-mode ps needs a communicator")
	}
	o := &j.opts
	consistency, err := parseConsistency(m.consistency)
	if err != nil {
		return nil, err
	}
	r, err := newReplica(j)
	if err != nil {
		return nil, err
	}
	opts := ps.Options{Servers: m.servers, Consistency: consistency, Optimizer: newOptimizer(o)}
	t := &psTrainer{replica: r, comm: j.comm, workers: j.comm.Size() - m.servers, total: make([]float64, 1), count: make([]int64, 1)}
	if j.comm.Rank() < m.servers {
		t.server, err = ps.NewServer(ctx, j.comm, r.model.Params(), opts)
		if err != nil {
			return nil, err
		}
		t.serve = make(chan error, 1)
		go func() { t.serve <- t.server.Serve(ctx) }()
		return t, nil
	}
	t.worker, err = ps.NewWorker(ctx, j.comm, r.model.Params(), opts)
	return t, err
}

// parseConsistency reads -consistency: async, sync or ssp:K.
func parseConsistency(s string) (ps.Consistency, error) {
	switch {
	case s == "async":
		return ps.Async, nil
	case s == "sync":
		return ps.Sync, nil
	case strings.HasPrefix(s, "ssp:"):
		k, err := strconv.Atoi(s[len("ssp:"):])
		if err == nil && k >= 0 {
			return ps.BoundedStaleness(k), nil
		}
	}
	return ps.Consistency{}, fmt.Errorf("-consistency %q: want async, sync or ssp:K (K >= 0)", s)
}

func (t *psTrainer) step(ctx context.Context, global []int) (float64, error) {
	if t.worker == nil {
		select {
		case err := <-t.serve:
			t.serve <- err // for close
			if err == nil {
				err = errors.New("the workers closed early")
			}
			return 0, err
		default:
			return 0, nil
		}
	}
	// N/B over the workers, as ddp does: under Sync the servers' average is
	// the mean over the global batch; under Async each push is the mean
	// gradient of the worker's own share, one SGD step.
	w := t.comm.Rank() - t.comm.Size() + t.workers
	loss, err := t.forwardBackward(share(global, w, t.workers), nn.GlobalMeanScale(len(global), t.workers), nil)
	if err != nil {
		return 0, err
	}
	return loss, t.worker.PushPull(ctx).Wait()
}

func (t *psTrainer) sum(ctx context.Context, v float64) (float64, error) {
	t.total[0] = v
	err := collective.AllReduce(ctx, t.comm, t.total, collective.Sum)
	return t.total[0], err
}

// evaluate has each worker pull the latest values and classify its part of
// the test set.
func (t *psTrainer) evaluate(ctx context.Context) (int, error) {
	correct := 0
	if t.worker != nil {
		if err := t.worker.Pull(ctx).Wait(); err != nil {
			return 0, err
		}
		n, w := t.test.Len(), t.comm.Rank()-t.comm.Size()+t.workers
		var err error
		if correct, err = t.correct(n*w/t.workers, n*(w+1)/t.workers); err != nil {
			return 0, err
		}
	}
	t.count[0] = int64(correct)
	if err := collective.AllReduce(ctx, t.comm, t.count, collective.Sum); err != nil {
		return 0, err
	}
	return int(t.count[0]), nil
}

// params has the first worker pull the latest values and broadcast them to
// every rank (rank 0, which prints the hash, is a server).
func (t *psTrainer) params(ctx context.Context) ([]*parallel.Param, error) {
	first := t.comm.Size() - t.workers
	if t.comm.Rank() == first {
		if err := t.worker.Pull(ctx).Wait(); err != nil {
			return nil, err
		}
	}
	params := t.model.Params()
	for _, p := range params {
		if err := collective.Broadcast(ctx, t.comm, p.Data, first); err != nil {
			return nil, err
		}
	}
	return params, nil
}

func (t *psTrainer) save(context.Context, string, *checkpoint.Checkpoint) error {
	return errors.New("-mode ps does not save checkpoints")
}

func (t *psTrainer) load(context.Context, string) (*checkpoint.Checkpoint, error) {
	return nil, errors.New("-mode ps does not load checkpoints")
}

// close ends the job: workers say goodbye, servers wait until all have.
func (t *psTrainer) close() error {
	if t.worker != nil {
		return t.worker.Close()
	}
	err := <-t.serve
	t.server.Close()
	return err
}
