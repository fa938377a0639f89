package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/mnist"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/shard"
)

// fsdp is sharded data parallelism (package shard): each Linear layer is
// one unit, whose parameters, gradients and optimizer state each rank
// keeps a shard of (-strategy says which of them). Forward gathers each
// unit's parameters just before the layer runs and releases them after;
// backward gathers them again, and reduce-scatters the layer's gradients
// as soon as its backward is done, while the earlier layers' backward runs.
// Each rank then steps its own shards. The numbers are those of -mode ddp
// up to floating-point summation order.
type fsdp struct {
	comm    *collective.Comm
	fs      *shard.FSDP
	model   *nn.Sequential
	unitOf  []int // per layer: its unit, or -1 (no parameters)
	loss    *nn.SoftmaxCrossEntropy
	opt     nn.Optimizer
	train   *mnist.Set
	test    *mnist.Set
	sharded bool // checkpoints are sharded directories

	x      []float32 // this rank's rows of the batch
	labels []int32
	total  []float64 // the loss sum's AllReduce buffer
	count  []int64   // evaluate's
}

// fsdpMode is -mode fsdp's flags.
type fsdpMode struct {
	strategy          string
	prefetch          int
	groupSize         int
	shardedCheckpoint bool
}

func (m *fsdpMode) flags(fs *flag.FlagSet) {
	fs.StringVar(&m.strategy, "strategy", "full", "fsdp: what each rank shards: full (parameters, gradients, optimizer state), grad (gradients and optimizer state), optim (optimizer state), none, or hybrid (full within groups of -group-size ranks)")
	fs.IntVar(&m.prefetch, "prefetch", 1, "fsdp: units whose gather starts ahead of use (0: none)")
	fs.IntVar(&m.groupSize, "group-size", 0, "fsdp -strategy hybrid: ranks per shard group (0: the ranks of each host, which must be as many on every host)")
	fs.BoolVar(&m.shardedCheckpoint, "sharded-checkpoint", false, "fsdp: save and resume sharded checkpoints (a directory beside -checkpoint's file, each rank writing its shard)")
}

func (m *fsdpMode) check(*options) []error {
	var c checker
	_, err := shard.ParseStrategy(m.strategy)
	c.check(err == nil, "-strategy %q: want full, grad, optim, none or hybrid", m.strategy)
	c.check(m.prefetch >= 0, "-prefetch %d: want 0 (none) or more", m.prefetch)
	c.check(m.groupSize >= 0, "-group-size %d: want 0 (ranks per host) or more", m.groupSize)
	return c
}

func (m *fsdpMode) newTrainer(ctx context.Context, j *job) (trainer, error) {
	return newFSDP(ctx, j, m)
}

func newFSDP(ctx context.Context, j *job, m *fsdpMode) (*fsdp, error) {
	if j.comm == nil {
		return nil, fmt.Errorf("-mode fsdp needs a communicator")
	}
	o := &j.opts
	st, err := shard.ParseStrategy(m.strategy)
	if err != nil {
		return nil, err
	}
	model, err := nn.NewMLP(o.layers, o.seed)
	if err != nil {
		return nil, err
	}
	loss, err := nn.NewSoftmaxCrossEntropy(mnist.Classes)
	if err != nil {
		return nil, err
	}
	f := &fsdp{comm: j.comm, model: model, loss: loss, opt: newOptimizer(o), train: j.train, test: j.test,
		sharded: m.shardedCheckpoint, total: make([]float64, 1), count: make([]int64, 1)}
	var units [][]*parallel.Param
	for _, l := range model.Layers {
		f.unitOf = append(f.unitOf, -1)
		if ps := l.Params(); len(ps) > 0 {
			f.unitOf[len(f.unitOf)-1] = len(units)
			units = append(units, ps)
		}
	}
	prefetch := m.prefetch
	if prefetch == 0 {
		prefetch = -1 // the flag's 0 is off; Options' is the default
	}
	// -group-size 0 leaves Hybrid's group to the communicator: one host's ranks.
	f.fs, err = shard.New(ctx, j.comm, units, shard.Options{Strategy: st, Prefetch: prefetch, GroupSize: m.groupSize})
	if err != nil {
		return nil, err
	}
	rows := (o.batch + j.size() - 1) / j.size()
	f.x, f.labels = make([]float32, rows*mnist.Pixels), make([]int32, rows)
	return f, nil
}

func (f *fsdp) step(ctx context.Context, global []int) (float64, error) {
	size := f.comm.Size()
	samples := share(global, f.comm.Rank(), size)
	b := len(samples)
	x, labels := f.x[:b*mnist.Pixels], f.labels[:b]
	if err := f.train.Gather(samples, x, labels); err != nil {
		return 0, err
	}
	logits, err := f.forward(ctx, x, b, true)
	if err != nil {
		return 0, err
	}
	// N/B, not 1/(local batch): see -mode ddp.
	loss, err := f.loss.Forward(logits, labels, nn.GlobalMeanScale(len(global), size))
	if err != nil {
		return 0, err
	}
	dy := f.loss.Grad()
	for i := len(f.model.Layers) - 1; i >= 0; i-- {
		u := f.unitOf[i]
		if u >= 0 {
			if err := f.fs.GatherBackward(ctx, u); err != nil {
				return 0, err
			}
		}
		if dy, err = f.model.Layers[i].Backward(dy, i > 0, nil); err != nil {
			return 0, err
		}
		if u >= 0 {
			if err := f.fs.ReduceGrads(ctx, u); err != nil {
				return 0, err
			}
			if err := f.fs.Release(u); err != nil {
				return 0, err
			}
		}
	}
	return loss, f.fs.Step(ctx, f.opt)
}

// forward runs the layers on a batch of rows, gathering each unit for its
// layer; training keeps the last unit gathered for backward, which starts
// with it.
func (f *fsdp) forward(ctx context.Context, x []float32, rows int, training bool) ([]float32, error) {
	last := f.fs.Units() - 1
	var err error
	for i, l := range f.model.Layers {
		u := f.unitOf[i]
		if u >= 0 {
			if err := f.fs.Gather(ctx, u); err != nil {
				return nil, err
			}
		}
		if x, err = l.Forward(x, rows); err != nil {
			return nil, err
		}
		if u >= 0 && !(training && u == last) {
			if err := f.fs.Release(u); err != nil {
				return nil, err
			}
		}
	}
	return x, nil
}

func (f *fsdp) sum(ctx context.Context, v float64) (float64, error) {
	f.total[0] = v
	err := collective.AllReduce(ctx, f.comm, f.total, collective.Sum)
	return f.total[0], err
}

// evaluate has each rank classify its part of the test set, layer by
// layer over the chunks of its part, so that every rank gathers each unit
// once whatever the size of its part.
func (f *fsdp) evaluate(ctx context.Context) (int, error) {
	n, rank, size := f.test.Len(), f.comm.Rank(), f.comm.Size()
	lo, hi := n*rank/size, n*(rank+1)/size
	rows := hi - lo
	idx := make([]int, rows)
	for i := range idx {
		idx[i] = lo + i
	}
	act := make([]float32, rows*mnist.Pixels)
	labels := make([]int32, rows)
	if err := f.test.Gather(idx, act, labels); err != nil {
		return 0, err
	}
	width := mnist.Pixels
	for i, l := range f.model.Layers {
		u := f.unitOf[i]
		if u >= 0 {
			if err := f.fs.Gather(ctx, u); err != nil {
				return 0, err
			}
		}
		next := make([]float32, rows*l.OutSize())
		for start := 0; start < rows; start += evalChunk {
			m := min(evalChunk, rows-start)
			y, err := l.Forward(act[start*width:(start+m)*width], m)
			if err != nil {
				return 0, err
			}
			copy(next[start*l.OutSize():], y)
		}
		if u >= 0 {
			if err := f.fs.Release(u); err != nil {
				return 0, err
			}
		}
		act, width = next, l.OutSize()
	}
	f.count[0] = int64(nn.CountCorrect(act, labels, mnist.Classes))
	err := collective.AllReduce(ctx, f.comm, f.count, collective.Sum)
	return int(f.count[0]), err
}

// params gathers every unit and returns copies of the whole model's
// parameters.
func (f *fsdp) params(ctx context.Context) ([]*parallel.Param, error) {
	var out []*parallel.Param
	for u := range f.fs.Units() {
		if err := f.fs.Gather(ctx, u); err != nil {
			return nil, err
		}
		for _, p := range f.fs.UnitParams(u) {
			out = append(out, &parallel.Param{Name: p.Name, Data: slices.Clone(p.Data)})
		}
		if err := f.fs.Release(u); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// save writes a full checkpoint (any mode resumes from it), or with
// -sharded-checkpoint a sharded one beside it, which each rank writes its
// own part of.
func (f *fsdp) save(ctx context.Context, path string, ck *checkpoint.Checkpoint) error {
	if f.sharded {
		return f.fs.SaveSharded(ctx, shardedPath(path), ck)
	}
	return f.fs.SaveFull(ctx, path, ck)
}

func (f *fsdp) load(ctx context.Context, path string) (*checkpoint.Checkpoint, error) {
	if f.sharded {
		path = shardedPath(path)
	}
	return f.fs.Load(ctx, path, f.opt)
}

// shardedPath is the directory of the sharded checkpoint beside the file
// path.
func shardedPath(path string) string {
	return filepath.Join(filepath.Dir(path), "mnist-sharded")
}

func (f *fsdp) close() error { return f.fs.Close() }
