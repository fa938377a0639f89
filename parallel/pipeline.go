package parallel

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/collective"
)

// Stage is one consecutive part of a model, held by one rank of a
// pipeline. The pipeline calls it from one goroutine at a time.
type Stage interface {
	// Forward computes micro-batch mb's output from its input. The stage
	// keeps what its Backward will need; out must stay unchanged until
	// Backward(mb) returns, and in (owned by the pipeline) stays valid
	// until then too. Lengths may differ from one micro-batch to the next.
	Forward(ctx context.Context, mb int, in []float32) (out []float32, err error)
	// Backward takes the gradient of the loss with respect to micro-batch
	// mb's output, writes the gradient with respect to its input into dIn
	// (len(dIn) == len(in); nil on the first stage, whose input needs no
	// gradient), and adds the parameters' gradients to their Grad.
	Backward(ctx context.Context, mb int, dOut, dIn []float32) error
	// Params are the stage's parameters, the same ones at every call. The
	// pipeline zeroes their gradients when a step starts and divides them
	// by the number of micro-batches when the stage's last backward ends.
	Params() []*Param
}

// LossStage is the last stage of a pipeline: it also computes the loss.
type LossStage interface {
	Stage
	// Loss returns micro-batch mb's loss, given the stage's output and the
	// micro-batch's targets, and writes the loss's gradient with respect to
	// out into dOut (len(dOut) == len(out)).
	Loss(ctx context.Context, mb int, out, targets, dOut []float32) (float64, error)
}

// Batch is one step's data. Only the first stage's rank reads Inputs and
// only the last stage's rank reads Targets; other ranks may pass a zero
// Batch. Both ends split their rows the same way into the micro-batches:
// as evenly as possible, the first Samples%M micro-batches one row larger.
type Batch struct {
	Samples int       // rows in the batch; at least the number of micro-batches
	Inputs  []float32 // Samples rows of equal width, the first stage's input
	Targets []float32 // Samples rows of equal width, for LossStage.Loss
}

// GradSync is told when a parameter's gradient is final for the step, and
// waited for before Step returns: DataParallel is one, which syncs a
// stage's gradients with its replicas (2-D parallelism). When it also has a
// method Comm() *collective.Comm (DataParallel has), a failed step aborts
// that communicator too, so that the replicas stop with this pipeline.
type GradSync interface {
	Ready(p *Param)
	Sync(ctx context.Context) error
}

// StageParams lists the parameters of stages, stage by stage: what a
// DataParallel over a stage's replicas needs before the pipeline exists.
func StageParams(stages []Stage) []*Param {
	var params []*Param
	for _, s := range stages {
		if s != nil {
			params = append(params, s.Params()...)
		}
	}
	return params
}

// PipelineOptions configure NewPipeline; every rank must pass the same
// Schedule and Microbatches and the same number of stages.
type PipelineOptions struct {
	// Schedule: zero means OneFOneB with one stage per rank and
	// Interleaved1F1B with more.
	Schedule PipelineSchedule
	// Microbatches is M, the micro-batches a step's batch is split into;
	// zero means as many as ranks.
	Microbatches int
	// GradSync, if set, is given each parameter as its gradient becomes
	// final, and synced before Step returns.
	GradSync GradSync
	// MaxMessage bounds the float32s of one activation or gradient a rank
	// accepts from a peer; zero means 1<<28 (1 GiB).
	MaxMessage int
}

// PipelineStats describe a pipeline's work on this rank.
type PipelineStats struct {
	Steps int
	// StepTime is the wall time of the last step; Busy the part of it spent
	// in the stages' Forward, Loss and Backward. 1 - Busy/StepTime is the
	// rank's bubble.
	StepTime, Busy time.Duration
	// PeakActivationBytes is the most bytes of activations (inputs and
	// outputs of micro-batches whose forward has run and backward has not)
	// this rank's stages held at once, over all steps.
	PeakActivationBytes int64
}

// ErrPipeline is the class of a pipeline's own errors: bad options or
// batches, ranks that disagree, a message that breaks the protocol.
var ErrPipeline = errors.New("parallel: pipeline")

// Pipeline runs a model split into consecutive stages over the ranks of a
// communicator: rank r holds stages r, r+P, r+2P ... (one unless the
// schedule is interleaved). Step runs one training step's forwards and
// backwards over the plan of its schedule (see PipelinePlan), the
// activations and gradients travelling between ranks by Send and Recv that
// overlap the computing. A Pipeline is used by one goroutine at a time.
type Pipeline struct {
	opts     PipelineOptions
	plan     *PipelinePlan
	comm     *collective.Comm
	channels []*collective.Comm // activations and gradients (nil with one rank)
	rank     int
	ranks    int
	m        int
	stages   []Stage    // by chunk
	byStage  [][]*Param // each chunk's Params, asked once
	params   []*Param
	last     LossStage // on the last stage's rank only
	acts     []Action  // this rank's part of the plan
	workerOf []*pipeWorker
	workers  []*pipeWorker
	wg       sync.WaitGroup
	pool     *bufPool

	// Per step.
	step     int64
	done     []bool     // by action
	slots    [][]mbSlot // by chunk and micro-batch
	lastB    []int      // by chunk: its last backward's action
	batch    Batch
	inWidth  int     // floats per sample of Inputs
	tgtWidth int     // of Targets
	loss     float64 // the sum of the step's micro-batch losses, once known
	lossSum  float64 // on the last stage: of the losses so far
	alive    int64
	started  time.Time
	actStart []time.Duration
	actEnd   []time.Duration

	stats     PipelineStats
	err       error // the failure that ended the pipeline
	closeOnce sync.Once
}

// mbSlot is one micro-batch on one of the rank's stages.
type mbSlot struct {
	in, out   []float32
	dOut, dIn []float32
	inPooled  bool    // in came from a peer, into a pool buffer
	samples   int     // rows of the micro-batch
	loss      float64 // the loss of micro-batches 0..mb, as the last stage computed it
}

// NewPipeline forms a pipeline over comm: every rank calls it with its own
// stages (rank r: stages r, r+P, ... in that order), and the same options.
// The last stage (on rank P-1) must be a LossStage. It checks the plan of
// the schedule (Check) and that the ranks agree before any step.
func NewPipeline(ctx context.Context, comm *collective.Comm, stages []Stage, opts PipelineOptions) (*Pipeline, error) {
	if comm == nil {
		return nil, fmt.Errorf("%w: NewPipeline needs a communicator", ErrPipeline)
	}
	p := &Pipeline{comm: comm, rank: comm.Rank(), ranks: comm.Size(), stages: stages, opts: opts}
	local := p.configure()
	if err := p.agree(ctx, local); err != nil {
		return nil, err
	}
	if p.ranks > 1 {
		for range 2 {
			c, err := comm.Split(ctx, 0, p.rank)
			if err != nil {
				p.Close()
				return nil, fmt.Errorf("parallel: NewPipeline: %w", err)
			}
			p.channels = append(p.channels, c)
		}
	}
	p.startWorkers()
	return p, nil
}

// configure checks this rank's arguments and builds its plan; the error is
// local and is shared with the others by agree.
func (p *Pipeline) configure() error {
	v := len(p.stages)
	if p.opts.Schedule == 0 {
		p.opts.Schedule = OneFOneB
		if v > 1 {
			p.opts.Schedule = Interleaved1F1B
		}
	}
	if p.opts.Microbatches == 0 {
		p.opts.Microbatches = p.ranks
	}
	if p.opts.MaxMessage <= 0 {
		p.opts.MaxMessage = 1 << 28
	}
	p.m = p.opts.Microbatches
	if v == 0 {
		return fmt.Errorf("%w: rank %d has no stages", ErrPipeline, p.rank)
	}
	for c, s := range p.stages {
		if s == nil {
			return fmt.Errorf("%w: rank %d's stage %d is nil", ErrPipeline, p.rank, c*p.ranks+p.rank)
		}
		p.byStage = append(p.byStage, s.Params())
		for _, prm := range p.byStage[c] {
			if prm == nil || len(prm.Grad) != len(prm.Data) {
				return fmt.Errorf("%w: stage %d has a parameter that is nil or whose Grad is not as long as its Data", ErrPipeline, c*p.ranks+p.rank)
			}
			p.params = append(p.params, prm)
		}
	}
	if p.rank == p.ranks-1 {
		last, ok := p.stages[v-1].(LossStage)
		if !ok {
			return fmt.Errorf("%w: the last stage (%d, on rank %d) is a %T, which has no Loss method", ErrPipeline, v*p.ranks-1, p.rank, p.stages[v-1])
		}
		p.last = last
	}
	plan, err := NewPipelinePlan(p.opts.Schedule, p.ranks, v, p.m)
	if err != nil {
		return err
	}
	if err := plan.Check(); err != nil {
		return err
	}
	p.plan = plan
	p.acts = plan.Actions[p.rank]
	p.done = make([]bool, len(p.acts))
	p.actStart = make([]time.Duration, len(p.acts))
	p.actEnd = make([]time.Duration, len(p.acts))
	p.slots = make([][]mbSlot, v)
	for c := range p.slots {
		p.slots[c] = make([]mbSlot, p.m)
	}
	p.lastB = make([]int, v)
	for i, a := range p.acts {
		if a.Kind == RunBackward {
			p.lastB[a.Stage/p.ranks] = i
		}
	}
	p.pool = &bufPool{}
	return nil
}

// agree makes every rank fail if any rank's arguments are bad or differ
// from rank 0's, naming the rank and what differs, before any rank waits
// for a message that would never come.
func (p *Pipeline) agree(ctx context.Context, local error) error {
	const fields = 4
	mine := []int64{0, int64(p.opts.Schedule), int64(p.opts.Microbatches), int64(len(p.stages))}
	if local != nil {
		mine[0] = 1
	}
	all := make([]int64, fields*p.ranks)
	if err := collective.AllGather(ctx, p.comm, mine, all); err != nil {
		return fmt.Errorf("parallel: NewPipeline: %w", err)
	}
	if local != nil {
		return local
	}
	for r := range p.ranks {
		theirs := all[r*fields : (r+1)*fields]
		switch {
		case theirs[0] != 0:
			return fmt.Errorf("%w: rank %d could not form its part of the pipeline (its error says why)", ErrPipeline, r)
		case !slices.Equal(theirs[1:], all[1:fields]):
			return fmt.Errorf("%w: rank %d has schedule %v, %d micro-batches, %d stages; rank 0 has %v, %d, %d",
				ErrPipeline, r, PipelineSchedule(theirs[1]), theirs[2], theirs[3], PipelineSchedule(all[1]), all[2], all[3])
		}
	}
	return nil
}

func (p *Pipeline) startWorkers() {
	p.workerOf = make([]*pipeWorker, len(p.acts))
	byChannel := map[channel]*pipeWorker{}
	for i, a := range p.acts {
		if a.Kind.compute() {
			continue
		}
		ch := channelOf(p.rank, a)
		w := byChannel[ch]
		if w == nil {
			w = &pipeWorker{send: ch.from == p.rank, grad: ch.grad, peer: a.Peer, pool: p.pool, maxLen: p.opts.MaxMessage}
			w.comm = p.channels[0]
			if ch.grad {
				w.comm = p.channels[1]
			}
			byChannel[ch] = w
			p.workers = append(p.workers, w)
		}
		w.capacity++
		p.workerOf[i] = w
	}
	for _, w := range p.workers {
		w.reqs = make(chan pipeMsg, w.capacity)
		w.done = make(chan pipeMsg, w.capacity)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			w.run()
		}()
	}
}

// Plan is the plan every rank runs.
func (p *Pipeline) Plan() *PipelinePlan { return p.plan }

// Params are this rank's stages' parameters, stage by stage.
func (p *Pipeline) Params() []*Param { return p.params }

// Stats describe the pipeline's work on this rank so far.
func (p *Pipeline) Stats() PipelineStats { return p.stats }

// ActionTimes are, for each of this rank's actions (Plan().Actions[rank])
// in the last step, when it started and ended, from the step's start: a
// compute's run; a Send's or Recv's issue and the moment this rank saw it
// complete. Valid until the next Step.
func (p *Pipeline) ActionTimes() (start, end []time.Duration) { return p.actStart, p.actEnd }

// Close ends the pipeline's goroutines and the communicators it made; the
// communicator it was given stays open. Not to be called during a Step.
func (p *Pipeline) Close() error {
	p.closeOnce.Do(func() {
		for _, w := range p.workers {
			close(w.reqs)
		}
		p.wg.Wait()
		for _, c := range p.channels {
			c.Close()
		}
	})
	return nil
}

// Step runs one step: it zeroes the stages' gradients, splits batch into
// the micro-batches, runs this rank's part of the plan, and leaves in each
// parameter's Grad the gradient averaged over the micro-batches (and, with
// a GradSync, synced). It returns the mean of the micro-batches' losses,
// on every rank.
//
// A step succeeds on every rank or on none: it ends with a barrier of the
// pipeline's ranks (after the GradSync's Sync), so a rank whose part ended
// early cannot report success while another's failed. Any failure — an
// error from a stage, a bad batch, a lost rank, ctx ending — aborts the
// step on every rank of the pipeline (and the GradSync's communicator) with
// an error that names the rank and the cause, and ends the pipeline: later
// steps return the same error, and the ranks must form a new one.
func (p *Pipeline) Step(ctx context.Context, batch Batch) (float64, error) {
	if p.err != nil {
		return 0, p.err
	}
	p.started = time.Now()
	p.step++
	p.batch, p.loss, p.lossSum = batch, 0, 0
	clear(p.done)
	for _, prm := range p.params {
		clear(prm.Grad)
	}
	var busy time.Duration
	err := p.checkBatch()
	for i := 0; err == nil && i < len(p.acts); i++ {
		p.actStart[i] = time.Since(p.started) // a compute's is reset once its inputs are in
		err = p.run(ctx, i)
		p.actEnd[i] = time.Since(p.started)
		if p.acts[i].Kind.compute() {
			busy += p.actEnd[i] - p.actStart[i]
		}
	}
	// Every message of the step is sent and received before it ends.
	for i := 0; err == nil && i < len(p.acts); i++ {
		err = p.wait(i)
		if !p.acts[i].Kind.compute() {
			p.actEnd[i] = time.Since(p.started)
		}
	}
	if err == nil && p.opts.GradSync != nil {
		if err = p.opts.GradSync.Sync(ctx); err != nil {
			err = fmt.Errorf("parallel: pipeline rank %d: syncing gradients: %w", p.rank, err)
		}
	}
	// A rank whose part ended early (stage 0's last backward comes last)
	// must not report success while another rank's part failed: the step
	// succeeds on every rank or on none. With a GradSync this also covers
	// the replicas: a rank here has passed a Sync that needed every replica.
	if err == nil && len(p.channels) > 0 {
		if err = collective.Barrier(ctx, p.channels[1]); err != nil {
			err = fmt.Errorf("parallel: pipeline rank %d, step %d, waiting for the other ranks to finish: %w", p.rank, p.step, err)
		}
	}
	if err != nil {
		return 0, p.fail(err)
	}
	p.batch = Batch{} // the caller's slices are not kept past the step
	p.stats.Steps++
	p.stats.StepTime, p.stats.Busy = time.Since(p.started), busy
	return p.loss / float64(p.m), nil
}

// checkBatch checks the parts of the batch this rank reads.
func (p *Pipeline) checkBatch() error {
	b := p.batch
	first, last := p.rank == 0, p.last != nil
	if !first && !last {
		return nil
	}
	if b.Samples < p.m {
		return fmt.Errorf("%w: rank %d: a batch of %d samples cannot make %d micro-batches", ErrPipeline, p.rank, b.Samples, p.m)
	}
	if first {
		if len(b.Inputs)%b.Samples != 0 {
			return fmt.Errorf("%w: rank %d: %d inputs are not %d rows of equal width", ErrPipeline, p.rank, len(b.Inputs), b.Samples)
		}
		p.inWidth = len(b.Inputs) / b.Samples
	}
	if last {
		if len(b.Targets)%b.Samples != 0 {
			return fmt.Errorf("%w: rank %d: %d targets are not %d rows of equal width", ErrPipeline, p.rank, len(b.Targets), b.Samples)
		}
		p.tgtWidth = len(b.Targets) / b.Samples
	}
	return nil
}

// rows is micro-batch mb's share of the batch's rows.
func (p *Pipeline) rows(mb int) (lo, hi int) {
	size, extra := p.batch.Samples/p.m, p.batch.Samples%p.m
	lo = mb*size + min(mb, extra)
	hi = lo + size
	if mb < extra {
		hi++
	}
	return lo, hi
}

func (p *Pipeline) slot(stage, mb int) *mbSlot { return &p.slots[stage/p.ranks][mb] }

// run runs action i.
func (p *Pipeline) run(ctx context.Context, i int) error {
	a := p.acts[i]
	switch a.Kind {
	case RecvActivation, RecvGradient:
		from := a.Stage - 1
		if a.Kind == RecvGradient {
			from = a.Stage + 1
		}
		p.push(i, pipeMsg{ctx: ctx, action: i, step: p.step, stage: from, mb: a.Microbatch})
		return nil
	case SendActivation:
		s := p.slot(a.Stage, a.Microbatch)
		p.push(i, pipeMsg{ctx: ctx, action: i, step: p.step, stage: a.Stage, mb: a.Microbatch, buf: s.out, samples: s.samples})
		return nil
	case SendGradient:
		s := p.slot(a.Stage, a.Microbatch)
		p.push(i, pipeMsg{ctx: ctx, action: i, step: p.step, stage: a.Stage, mb: a.Microbatch, buf: s.dIn, loss: s.loss, pooled: true})
		s.dIn = nil
		return nil
	}
	for _, d := range a.Deps {
		if err := p.wait(d); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("parallel: pipeline rank %d, step %d: %w", p.rank, p.step, context.Cause(ctx))
	}
	p.actStart[i] = time.Since(p.started)
	var err error
	if a.Kind == RunForward {
		err = p.forward(ctx, a.Stage, a.Microbatch)
	} else {
		err = p.backward(ctx, a.Stage, a.Microbatch)
	}
	p.done[i] = true
	if err == nil && a.Kind == RunBackward && p.lastB[a.Stage/p.ranks] == i {
		p.finishStage(a.Stage)
	}
	return err
}

func (p *Pipeline) forward(ctx context.Context, stage, mb int) error {
	s := p.slot(stage, mb)
	switch {
	case stage == 0:
		lo, hi := p.rows(mb)
		s.in, s.samples = p.batch.Inputs[lo*p.inWidth:hi*p.inWidth], hi-lo
	case p.plan.RankOf(stage-1) == p.rank:
		prev := p.slot(stage-1, mb)
		s.in, s.samples = prev.out, prev.samples
	} // else received: s.in and s.samples came with the message
	out, err := p.stages[stage/p.ranks].Forward(ctx, mb, s.in)
	if err != nil {
		return fmt.Errorf("parallel: pipeline rank %d: stage %d forward of micro-batch %d: %w", p.rank, stage, mb, err)
	}
	s.out = out
	p.alive += 4 * int64(len(s.in)+len(out))
	p.stats.PeakActivationBytes = max(p.stats.PeakActivationBytes, p.alive)
	if stage != p.plan.Stages()-1 {
		return nil
	}
	lo, hi := p.rows(mb)
	if hi-lo != s.samples {
		return fmt.Errorf("%w: rank %d: micro-batch %d has %d samples on the first stage and %d in the last stage's targets: both ends need the same Batch.Samples",
			ErrPipeline, p.rank, mb, s.samples, hi-lo)
	}
	s.dOut = p.pool.get(len(out))
	loss, err := p.last.Loss(ctx, mb, out, p.batch.Targets[lo*p.tgtWidth:hi*p.tgtWidth], s.dOut)
	if err != nil {
		return fmt.Errorf("parallel: pipeline rank %d: stage %d loss of micro-batch %d: %w", p.rank, stage, mb, err)
	}
	// Forwards of a stage run in micro-batch order, so this is the loss of
	// micro-batches 0..mb, summed in the same order on every run.
	p.lossSum += loss
	s.loss = p.lossSum
	return nil
}

func (p *Pipeline) backward(ctx context.Context, stage, mb int) error {
	s := p.slot(stage, mb)
	if stage+1 < p.plan.Stages() && p.plan.RankOf(stage+1) == p.rank {
		next := p.slot(stage+1, mb)
		s.dOut, s.loss, next.dIn = next.dIn, next.loss, nil
	}
	if len(s.dOut) != len(s.out) {
		return fmt.Errorf("%w: rank %d: stage %d's micro-batch %d output has %d values, its gradient from stage %d %d",
			ErrPipeline, p.rank, stage, mb, len(s.out), stage+1, len(s.dOut))
	}
	if stage > 0 {
		s.dIn = p.pool.get(len(s.in))
	}
	err := p.stages[stage/p.ranks].Backward(ctx, mb, s.dOut, s.dIn)
	p.pool.put(s.dOut) // the loss's, a peer's or the next stage's: always the pool's
	if s.inPooled {
		p.pool.put(s.in)
	}
	p.alive -= 4 * int64(len(s.in)+len(s.out))
	if mb == p.m-1 {
		p.loss = s.loss // the whole step's, as the last stage summed it
	}
	s.in, s.out, s.dOut, s.inPooled = nil, nil, nil, false
	if err != nil {
		return fmt.Errorf("parallel: pipeline rank %d: stage %d backward of micro-batch %d: %w", p.rank, stage, mb, err)
	}
	return nil
}

// finishStage averages a stage's gradients over the micro-batches, as
// torch's scale_grads does, and hands them to the GradSync.
func (p *Pipeline) finishStage(stage int) {
	params := p.byStage[stage/p.ranks]
	m := float32(p.m)
	for k := len(params) - 1; k >= 0; k-- {
		prm := params[k]
		if p.m > 1 {
			for j := range prm.Grad {
				prm.Grad[j] /= m
			}
		}
		if p.opts.GradSync != nil {
			p.opts.GradSync.Ready(prm)
		}
	}
}

// push hands action i's message to its worker.
func (p *Pipeline) push(i int, msg pipeMsg) {
	w := p.workerOf[i]
	w.pending++
	w.reqs <- msg
}

// wait returns once action i is complete: a compute has run (they run in
// order), a message has been sent or received.
func (p *Pipeline) wait(i int) error {
	for !p.done[i] {
		w := p.workerOf[i]
		if w == nil {
			return fmt.Errorf("%w: rank %d: action #%d %v waited for before it ran", ErrPipeline, p.rank, i, p.acts[i])
		}
		msg := <-w.done
		w.pending--
		if err := p.complete(msg); err != nil {
			return err
		}
	}
	return nil
}

// complete takes a worker's report of a message.
func (p *Pipeline) complete(msg pipeMsg) error {
	p.done[msg.action] = true
	a := p.acts[msg.action]
	if msg.err != nil || a.Kind == SendGradient {
		if msg.pooled {
			p.pool.put(msg.buf)
		}
		return msg.err
	}
	switch a.Kind {
	case RecvActivation:
		s := p.slot(a.Stage, a.Microbatch)
		s.in, s.inPooled, s.samples = msg.buf, true, msg.samples
	case RecvGradient:
		s := p.slot(a.Stage, a.Microbatch)
		s.dOut, s.loss = msg.buf, msg.loss
	}
	return nil
}

// fail ends the pipeline with err: it aborts its communicators (and the
// GradSync's), so that every other rank's step fails at once with err as
// the cause, and waits for its workers' messages to end.
func (p *Pipeline) fail(err error) error {
	for _, c := range p.channels {
		c.Abort(err)
	}
	if gs, ok := p.opts.GradSync.(interface{ Comm() *collective.Comm }); ok && gs.Comm() != nil {
		gs.Comm().Abort(err)
	}
	for _, w := range p.workers {
		for ; w.pending > 0; w.pending-- {
			if msg := <-w.done; msg.pooled {
				p.pool.put(msg.buf)
			}
		}
	}
	for c := range p.slots {
		clear(p.slots[c])
	}
	p.err = err
	return err
}

// pipeMsg is a message a worker is asked to send or receive, and then its
// report.
type pipeMsg struct {
	ctx     context.Context
	action  int
	step    int64
	stage   int // the sending stage
	mb      int
	buf     []float32
	samples int     // rows of the micro-batch (activations)
	loss    float64 // loss of micro-batches 0..mb (gradients)
	pooled  bool    // buf is the pool's: a gradient sent, a message received
	err     error
}

// A message is a header, then the payload. The header says which message
// it is, so that a plan the ranks do not share fails loudly, and how long
// the payload is, so that activations need no fixed shape.
const (
	pipeHeaderLen = 6 // step, stage, micro-batch, length, samples, loss bits
	tagHeader     = 1
	tagPayload    = 2
)

// pipeWorker sends or receives one channel's messages, in the plan's
// order, so that the rank's computing never waits on the network unless it
// needs a message.
type pipeWorker struct {
	comm     *collective.Comm
	peer     int
	send     bool
	grad     bool
	pool     *bufPool
	maxLen   int
	capacity int // messages per step
	reqs     chan pipeMsg
	done     chan pipeMsg
	pending  int // pushed and not yet reported back (the step's goroutine's count)
	header   [pipeHeaderLen]int64
}

func (w *pipeWorker) run() {
	for msg := range w.reqs {
		if w.send {
			msg.err = w.sendMsg(msg)
		} else {
			msg.buf, msg.samples, msg.loss, msg.err = w.recvMsg(msg)
			msg.pooled = msg.buf != nil
		}
		w.done <- msg
	}
}

func (w *pipeWorker) sendMsg(msg pipeMsg) error {
	w.header = [pipeHeaderLen]int64{msg.step, int64(msg.stage), int64(msg.mb), int64(len(msg.buf)), int64(msg.samples), int64(math.Float64bits(msg.loss))}
	if err := collective.Send(msg.ctx, w.comm, w.header[:], w.peer, tagHeader); err != nil {
		return w.wrap(msg, err)
	}
	if err := collective.Send(msg.ctx, w.comm, msg.buf, w.peer, tagPayload); err != nil {
		return w.wrap(msg, err)
	}
	return nil
}

func (w *pipeWorker) recvMsg(msg pipeMsg) (buf []float32, samples int, loss float64, err error) {
	if err := collective.Recv(msg.ctx, w.comm, w.header[:], w.peer, tagHeader); err != nil {
		return nil, 0, 0, w.wrap(msg, err)
	}
	h := w.header
	if h[0] != msg.step || h[1] != int64(msg.stage) || h[2] != int64(msg.mb) {
		return nil, 0, 0, w.wrap(msg, fmt.Errorf("%w: rank %d sent step %d, stage %d, micro-batch %d: the ranks do not run the same plan",
			ErrPipeline, w.peer, h[0], h[1], h[2]))
	}
	if h[3] < 0 || h[3] > int64(w.maxLen) || h[4] < 0 {
		return nil, 0, 0, w.wrap(msg, fmt.Errorf("%w: rank %d announced %d values, %d samples (at most %d values allowed: PipelineOptions.MaxMessage)",
			ErrPipeline, w.peer, h[3], h[4], w.maxLen))
	}
	buf = w.pool.get(int(h[3]))
	if err := collective.Recv(msg.ctx, w.comm, buf, w.peer, tagPayload); err != nil {
		return buf, 0, 0, w.wrap(msg, err)
	}
	return buf, int(h[4]), math.Float64frombits(uint64(h[5])), nil
}

func (w *pipeWorker) wrap(msg pipeMsg, err error) error {
	what, dir := "activation", "from"
	if w.grad {
		what = "gradient"
	}
	if w.send {
		dir = "to"
	}
	return fmt.Errorf("parallel: pipeline step %d: %s of stage %d, micro-batch %d, %s rank %d: %w", msg.step, what, msg.stage, msg.mb, dir, w.peer, err)
}

// bufPool recycles the buffers messages arrive in and gradients leave in:
// in a steady state (the same lengths step after step) nothing is
// allocated.
type bufPool struct {
	mu   sync.Mutex
	free [][]float32
}

// get returns a buffer of n values, the smallest free one that fits.
func (b *bufPool) get(n int) []float32 {
	b.mu.Lock()
	best := -1
	for i, f := range b.free {
		if cap(f) >= n && (best < 0 || cap(f) < cap(b.free[best])) {
			best = i
		}
	}
	if best >= 0 {
		f := b.free[best]
		last := len(b.free) - 1
		b.free[best], b.free[last] = b.free[last], nil
		b.free = b.free[:last]
		b.mu.Unlock()
		return f[:n]
	}
	b.mu.Unlock()
	return make([]float32, n)
}

func (b *bufPool) put(f []float32) {
	if cap(f) == 0 {
		return
	}
	b.mu.Lock()
	b.free = append(b.free, f)
	b.mu.Unlock()
}
