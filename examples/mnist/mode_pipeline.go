package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/mnist"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/parallel"
)

// pipe is pipeline parallelism, possibly times data parallelism: the MLP
// is cut into -stages × -chunks consecutive stages (whole Linear+ReLU
// units, balanced by their weights), each rank of a pipeline holds its
// stages (rank r: r, r+P, ...), and parallel.Pipeline runs each global
// batch's share as -microbatches micro-batches by -schedule. With N ranks,
// N/P pipelines (replicas) each train on their share of the global batch,
// and parallel.DataParallel syncs each stage's gradients over its replicas
// while the pipeline's last backwards run. World rank w is stage w%P of
// replica w/P.
type pipe struct {
	*replica  // the whole model on every rank: its own stages' parameters train, the others are copied in to evaluate
	world     *collective.Comm
	comms     []*collective.Comm // the pipeline's and the data-parallel group's
	pipeline  *parallel.Pipeline
	dp        *parallel.DataParallel // nil with one replica
	opt       *nn.ParamOptimizer     // of this rank's stages only
	last      *mlpStage              // this rank's last stage, if it is the pipeline's last
	stageOf   [][]*parallel.Param    // parameters by global stage
	stages    int                    // P
	replicas  int
	replicaID int
	x         []float32 // this replica's rows of the batch
	labels    []int32
	targets   []float32 // the labels as the pipeline carries them
	total     []float64
	count     []int64
}

func newPipe(ctx context.Context, j *job, m *pipelineMode) (_ *pipe, err error) {
	o := &j.opts
	if j.comm == nil {
		return nil, fmt.Errorf("-mode pipeline needs a communicator")
	}
	size, w := j.comm.Size(), j.comm.Rank()
	if size%m.stages != 0 {
		return nil, fmt.Errorf("-mode pipeline: %d ranks are not a whole number of %d-stage pipelines", size, m.stages)
	}
	r, err := newReplica(j)
	if err != nil {
		return nil, err
	}
	p := &pipe{replica: r, world: j.comm, stages: m.stages, replicas: size / m.stages, replicaID: w / m.stages,
		total: make([]float64, 1), count: make([]int64, 1)}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	units, err := cutModel(r.model, m.stages*m.chunks)
	if err != nil {
		return nil, err
	}
	stage := w % m.stages
	pp, err := j.comm.Split(ctx, p.replicaID, stage)
	if err != nil {
		return nil, err
	}
	p.comms = append(p.comms, pp)
	var mine []parallel.Stage
	for s, layers := range units {
		var params []*parallel.Param
		for _, l := range layers {
			params = append(params, l.Params()...)
		}
		p.stageOf = append(p.stageOf, params)
		if s%m.stages != stage {
			continue
		}
		st, err := newMLPStage(layers, s == 0)
		if err != nil {
			return nil, err
		}
		if s == len(units)-1 {
			if st.loss, err = nn.NewSoftmaxCrossEntropy(mnist.Classes); err != nil {
				return nil, err
			}
			p.last = st
		}
		mine = append(mine, st)
	}
	opts := parallel.PipelineOptions{Microbatches: m.microbatches}
	if opts.Schedule, err = parallel.ParsePipelineSchedule(m.schedule); err != nil {
		return nil, err
	}
	if p.replicas > 1 {
		dpc, err := j.comm.Split(ctx, stage, p.replicaID)
		if err != nil {
			return nil, err
		}
		p.comms = append(p.comms, dpc)
		if p.dp, err = parallel.NewDataParallel(ctx, dpc, parallel.StageParams(mine), parallel.DataParallelOptions{}); err != nil {
			return nil, err
		}
		opts.GradSync = p.dp
	}
	if p.pipeline, err = parallel.NewPipeline(ctx, pp, mine, opts); err != nil {
		return nil, err
	}
	if p.opt, err = nn.NewParamOptimizer(newOptimizer(o), p.pipeline.Params()); err != nil {
		return nil, err
	}
	rows := (o.batch + p.replicas - 1) / p.replicas
	p.x, p.labels, p.targets = make([]float32, rows*mnist.Pixels), make([]int32, rows), make([]float32, rows)
	return p, nil
}

func (p *pipe) step(ctx context.Context, global []int) (float64, error) {
	samples := share(global, p.replicaID, p.replicas)
	b := len(samples)
	x, labels, targets := p.x[:b*mnist.Pixels], p.labels[:b], p.targets[:b]
	if err := p.train.Gather(samples, x, labels); err != nil {
		return 0, err
	}
	for i, l := range labels {
		targets[i] = float32(l)
	}
	m := p.pipeline.Plan().Microbatches
	if p.last != nil {
		// The pipeline averages the gradients over its M micro-batches and
		// the data-parallel sync over the R replicas: scaling each
		// micro-batch's loss by R·M/B makes the result the gradient of the
		// global batch's mean loss, however the rows split.
		p.last.scale = nn.GlobalMeanScale(len(global), p.replicas*m)
	}
	loss, err := p.pipeline.Step(ctx, parallel.Batch{Samples: b, Inputs: x, Targets: targets})
	if err != nil {
		return 0, err
	}
	if err := p.opt.Step(); err != nil {
		return 0, err
	}
	// Every rank of the pipeline has the replica's loss (the mean of its
	// micro-batches' summed losses); one of them reports it.
	if p.world.Rank()%p.stages != 0 {
		return 0, nil
	}
	return loss * float64(m), nil
}

func (p *pipe) sum(ctx context.Context, v float64) (float64, error) {
	p.total[0] = v
	err := collective.AllReduce(ctx, p.world, p.total, collective.Sum)
	return p.total[0], err
}

// gatherModel copies every stage's parameters from the rank of the
// pipeline that trains them, so that every rank holds the whole model.
func (p *pipe) gatherModel(ctx context.Context) error {
	for s, params := range p.stageOf {
		for _, prm := range params {
			if err := collective.Broadcast(ctx, p.comms[0], prm.Data, s%p.stages); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *pipe) evaluate(ctx context.Context) (int, error) {
	if err := p.gatherModel(ctx); err != nil {
		return 0, err
	}
	n, rank, size := p.test.Len(), p.world.Rank(), p.world.Size()
	c, err := p.correct(n*rank/size, n*(rank+1)/size)
	if err != nil {
		return 0, err
	}
	p.count[0] = int64(c)
	err = collective.AllReduce(ctx, p.world, p.count, collective.Sum)
	return int(p.count[0]), err
}

func (p *pipe) params(ctx context.Context) ([]*parallel.Param, error) {
	if err := p.gatherModel(ctx); err != nil {
		return nil, err
	}
	return p.model.Params(), nil
}

var errPipelineCheckpoint = errors.New("-mode pipeline does not save or load checkpoints")

func (p *pipe) save(context.Context, string, *checkpoint.Checkpoint) error {
	return errPipelineCheckpoint
}

func (p *pipe) load(context.Context, string) (*checkpoint.Checkpoint, error) {
	return nil, errPipelineCheckpoint
}

func (p *pipe) close() error {
	var errs []error
	if p.pipeline != nil {
		errs = append(errs, p.pipeline.Close())
	}
	if p.dp != nil {
		errs = append(errs, p.dp.Close())
	}
	for _, c := range p.comms {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// cutModel splits an MLP's layers into n consecutive stages of whole units
// (a Linear and the ReLU after it), so that the largest stage's weights are
// as few as can be: a stage's compute is about its weights times the rows.
func cutModel(model *nn.Sequential, n int) ([][]nn.Layer, error) {
	var units [][]nn.Layer
	var cost []int
	for _, l := range model.Layers {
		if lin, ok := l.(*nn.Linear); ok {
			units = append(units, []nn.Layer{l})
			cost = append(cost, lin.InSize()*lin.OutSize())
			continue
		}
		if len(units) == 0 {
			return nil, fmt.Errorf("the model starts with a %T, not a Linear layer", l)
		}
		units[len(units)-1] = append(units[len(units)-1], l)
	}
	if n > len(units) {
		return nil, fmt.Errorf("an MLP of %d Linear layers cannot be cut into %d stages (-stages × -chunks): give -hidden more layers", len(units), n)
	}
	// best[k][i]: the smallest largest-stage cost of units[:i] in k stages.
	const inf = int(^uint(0) >> 1)
	best := make([][]int, n+1)
	cut := make([][]int, n+1)
	for k := range best {
		best[k], cut[k] = make([]int, len(units)+1), make([]int, len(units)+1)
		for i := range best[k] {
			best[k][i] = inf
		}
	}
	best[0][0] = 0
	for k := 1; k <= n; k++ {
		for i := k; i <= len(units); i++ {
			sum := 0
			for j := i - 1; j >= k-1; j-- { // the k-th stage is units[j:i]
				sum += cost[j]
				if best[k-1][j] == inf {
					continue
				}
				if c := max(best[k-1][j], sum); c < best[k][i] {
					best[k][i], cut[k][i] = c, j
				}
			}
		}
	}
	stages := make([][]nn.Layer, n)
	for k, i := n, len(units); k > 0; k-- {
		j := cut[k][i]
		for _, u := range units[j:i] {
			stages[k-1] = append(stages[k-1], u...)
		}
		i = j
	}
	return stages, nil
}

// mlpStage is a parallel.Stage made of nn layers. An nn layer keeps one
// batch's activations, but a pipeline stage holds up to M micro-batches
// between their forward and backward: so a micro-batch in flight gets a
// copy of the layers of its own, sharing the parameters (nn layers read
// them through the Param at every call). Copies are reused: 1F1B needs at
// most P of them, GPipe M.
type mlpStage struct {
	layers []nn.Layer // the model's own
	first  bool
	free   []*nn.Sequential
	busy   []*nn.Sequential // by micro-batch
	params []*parallel.Param
	rng    *rand.Rand // for NewLinear's initial values, which copies replace

	loss   *nn.SoftmaxCrossEntropy // the last stage's
	scale  float32
	labels []int32
}

func newMLPStage(layers []nn.Layer, first bool) (*mlpStage, error) {
	st := &mlpStage{layers: layers, first: first, rng: rand.New(rand.NewPCG(0, 0))}
	seq, err := nn.NewSequential(layers...)
	if err != nil {
		return nil, err
	}
	seq.InputGrad = !first
	st.params = seq.Params()
	st.free = append(st.free, seq)
	return st, nil
}

func (st *mlpStage) Params() []*parallel.Param { return st.params }

// take returns a copy of the layers for a micro-batch.
func (st *mlpStage) take() (*nn.Sequential, error) {
	if n := len(st.free); n > 0 {
		seq := st.free[n-1]
		st.free = st.free[:n-1]
		return seq, nil
	}
	layers := make([]nn.Layer, len(st.layers))
	for i, l := range st.layers {
		switch l := l.(type) {
		case *nn.Linear:
			c, err := nn.NewLinear(l.Weight.Name, l.InSize(), l.OutSize(), st.rng)
			if err != nil {
				return nil, err
			}
			c.Weight, c.Bias = l.Weight, l.Bias
			layers[i] = c
		case *nn.ReLU:
			c, err := nn.NewReLU(l.InSize())
			if err != nil {
				return nil, err
			}
			layers[i] = c
		default:
			return nil, fmt.Errorf("a pipeline stage cannot copy a %T", l)
		}
	}
	seq, err := nn.NewSequential(layers...)
	if err != nil {
		return nil, err
	}
	seq.InputGrad = !st.first
	return seq, nil
}

func (st *mlpStage) Forward(_ context.Context, mb int, in []float32) ([]float32, error) {
	seq, err := st.take()
	if err != nil {
		return nil, err
	}
	for len(st.busy) <= mb {
		st.busy = append(st.busy, nil)
	}
	st.busy[mb] = seq
	if len(in)%seq.InSize() != 0 {
		return nil, fmt.Errorf("%d inputs are not rows of %d", len(in), seq.InSize())
	}
	return seq.Forward(in, len(in)/seq.InSize())
}

func (st *mlpStage) Backward(_ context.Context, mb int, dOut, dIn []float32) error {
	seq := st.busy[mb]
	st.busy[mb] = nil
	dx, err := seq.Backward(dOut, nil)
	st.free = append(st.free, seq)
	if err != nil {
		return err
	}
	copy(dIn, dx) // dIn is nil on the first stage, which computes no dx
	return nil
}

func (st *mlpStage) Loss(_ context.Context, _ int, out, targets, dOut []float32) (float64, error) {
	st.labels = st.labels[:0]
	for _, t := range targets {
		st.labels = append(st.labels, int32(t))
	}
	loss, err := st.loss.Forward(out, st.labels, st.scale)
	if err != nil {
		return 0, err
	}
	copy(dOut, st.loss.Grad())
	return loss, nil
}

// pipelineMode is -mode pipeline's flags.
type pipelineMode struct {
	stages       int // P
	microbatches int // M
	chunks       int // v
	schedule     string
}

func (m *pipelineMode) flags(fs *flag.FlagSet) {
	fs.IntVar(&m.stages, "stages", 2, "pipeline: ranks per pipeline (P); -np must be a multiple, -np/P replicas sync gradients")
	fs.IntVar(&m.microbatches, "microbatches", 4, "pipeline: micro-batches per replica's share of a global batch (M)")
	fs.StringVar(&m.schedule, "schedule", "1f1b", "pipeline: gpipe, 1f1b or interleaved")
	fs.IntVar(&m.chunks, "chunks", 0, "pipeline: stages per rank (v) for -schedule interleaved or gpipe (0: 2 for interleaved, else 1)")
}

func (m *pipelineMode) check(o *options) []error {
	if o.mode != "pipeline" {
		return nil
	}
	var c checker
	schedule, err := parallel.ParsePipelineSchedule(m.schedule)
	c.check(err == nil, "-schedule %q: want gpipe, 1f1b or interleaved", m.schedule)
	if m.chunks == 0 {
		m.chunks = 1
		if schedule == parallel.Interleaved1F1B {
			m.chunks = 2
		}
	}
	c.check(m.stages >= 1, "-stages %d: want 1 or more", m.stages)
	c.check(m.microbatches >= 1, "-microbatches %d: want 1 or more", m.microbatches)
	c.check(m.chunks >= 1, "-chunks %d: want 1 or more", m.chunks)
	c.check(m.chunks == 1 || schedule != parallel.OneFOneB, "-chunks %d: 1f1b holds one stage per rank (use -schedule interleaved)", m.chunks)
	c.check(m.stages < 1 || o.np%m.stages == 0, "-np %d: want a multiple of -stages %d (the replicas of the pipeline)", o.np, m.stages)
	c.check(o.checkpoint == "", "-checkpoint: %v", errPipelineCheckpoint)
	return c
}

func (m *pipelineMode) newTrainer(ctx context.Context, j *job) (trainer, error) {
	return newPipe(ctx, j, m)
}
