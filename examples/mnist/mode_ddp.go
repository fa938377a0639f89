package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/parallel"
)

// ddp is data parallelism: every rank holds the whole model, computes the
// gradients of its share of the global batch, and parallel.DataParallel
// averages them over the ranks, overlapping that with backward (each
// layer's parameters are marked ready as soon as backward is done with
// them). Every rank then takes the same optimizer step.
type ddp struct {
	*replica
	comm  *collective.Comm
	dp    *parallel.DataParallel
	ready func(*parallel.Param) // dp.Ready, made once: a method value allocates
	total []float64             // the loss sum's AllReduce buffer
	count []int64               // evaluate's
}

// ddpMode is -mode ddp's flags.
type ddpMode struct {
	compression string
}

func (m *ddpMode) flags(fs *flag.FlagSet) {
	fs.StringVar(&m.compression, "compression", "", "ddp: compress gradient traffic, bf16 or fp16")
}

func (m *ddpMode) check(o *options) []error {
	var c checker
	c.check(m.compression == "" || m.compression == "bf16" || m.compression == "fp16", "-compression %q: want bf16 or fp16", m.compression)
	c.check(m.compression == "" || o.mode == "ddp", "-compression applies to -mode ddp only")
	return c
}

func (m *ddpMode) newTrainer(ctx context.Context, j *job) (trainer, error) { return newDDP(ctx, j, m) }

func newDDP(ctx context.Context, j *job, m *ddpMode) (*ddp, error) {
	if j.comm == nil {
		return nil, fmt.Errorf("-mode ddp needs a communicator")
	}
	r, err := newReplica(j)
	if err != nil {
		return nil, err
	}
	dp, err := parallel.NewDataParallel(ctx, j.comm, r.model.Params(), parallel.DataParallelOptions{Compression: m.compression})
	if err != nil {
		return nil, err
	}
	return &ddp{replica: r, comm: j.comm, dp: dp, ready: dp.Ready, total: make([]float64, 1), count: make([]int64, 1)}, nil
}

func (d *ddp) step(ctx context.Context, global []int) (float64, error) {
	// N/B, not 1/(local batch): the ranks' shares differ when the batch
	// does not split evenly, and the average over ranks must still be the
	// mean over the global batch.
	scale := nn.GlobalMeanScale(len(global), d.comm.Size())
	loss, err := d.forwardBackward(share(global, d.comm.Rank(), d.comm.Size()), scale, d.ready)
	if err != nil {
		return 0, err
	}
	if err := d.dp.Sync(ctx); err != nil {
		return 0, err
	}
	return loss, d.opt.Step()
}

func (d *ddp) sum(ctx context.Context, v float64) (float64, error) {
	d.total[0] = v
	err := collective.AllReduce(ctx, d.comm, d.total, collective.Sum)
	return d.total[0], err
}

// evaluate has each rank classify its part of the test set.
func (d *ddp) evaluate(ctx context.Context) (int, error) {
	n, rank, size := d.test.Len(), d.comm.Rank(), d.comm.Size()
	c, err := d.correct(n*rank/size, n*(rank+1)/size)
	if err != nil {
		return 0, err
	}
	d.count[0] = int64(c)
	err = collective.AllReduce(ctx, d.comm, d.count, collective.Sum)
	return int(d.count[0]), err
}

func (d *ddp) params(context.Context) ([]*parallel.Param, error) { return d.model.Params(), nil }

// save writes rank 0's parameters and optimizer state: every rank's are
// the same, since every rank steps with the same averaged gradients.
func (d *ddp) save(ctx context.Context, path string, ck *checkpoint.Checkpoint) error {
	d.addState(ck)
	return d.dp.SaveCheckpoint(ctx, path, ck)
}

func (d *ddp) load(ctx context.Context, path string) (*checkpoint.Checkpoint, error) {
	ck, err := d.dp.LoadCheckpoint(ctx, path)
	if err != nil {
		return nil, err
	}
	return ck, d.restoreState(ck)
}

func (d *ddp) close() error { return d.dp.Close() }
