// Command ddp times data-parallel training steps of an MLP on synthetic
// data: ringo's counterpart of torch_ddp.py, for the comparison with
// PyTorch DDP (run.sh) and for the overlap measurement (overlap.sh).
//
//	ddp -np 4                                   4 local ranks it starts itself
//	ringrun -np 2 ddp -models 784-2048-2048-10   one rank of a launcher's job
//
// Modes, taking turns step by step so that they see the same machine:
//
//	compute  forward, backward and optimizer step, no gradient sync
//	sync     the same, with DataParallel.Sync after backward (no overlap)
//	overlap  the same, marking each parameter Ready as backward finishes it
//	comm     Sync alone, no compute: the communication time of a step
//
// Rank 0 prints one CSV row per model and mode: the median and the fastest
// step time (a step's time is its slowest rank's), and samples/s at the
// median.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/cli"
	"github.com/ringo-ml/ringo/internal/localjob"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/parallel"
)

type options struct {
	np       int
	models   [][]int
	batch    int
	steps    int
	warmup   int
	modes    []string
	label    string
	bucketMB int
	header   bool
	phases   bool
}

func main() { cli.Main(run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	return cli.Run("ddp", stderr, err, func() error {
		if localjob.InJob() {
			return runRank(ctx, o, stdout, stderr)
		}
		return localjob.Spawn(ctx, o.np, args, nil, stdout, stderr)
	})
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("ddp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.np, "np", 2, "local ranks to start (ignored under a launcher)")
	models := fs.String("models", "784-256-256-10,784-2048-2048-10", "MLP sizes, comma-separated")
	fs.IntVar(&o.batch, "batch", 64, "batch per rank")
	fs.IntVar(&o.steps, "steps", 10, "timed steps per mode (the modes take turns, step by step)")
	fs.IntVar(&o.warmup, "warmup", 2, "untimed steps per mode first")
	modes := fs.String("modes", "compute,sync,overlap", "modes to time: compute, sync, overlap, comm")
	fs.StringVar(&o.label, "label", "ringo", "implementation label for the CSV")
	fs.IntVar(&o.bucketMB, "bucket-mb", 25, "DataParallel bucket size in MiB (PyTorch's default is 25)")
	fs.BoolVar(&o.header, "header", false, "print the CSV header first")
	fs.BoolVar(&o.phases, "phases", false, "also print rank 0's median time per phase of a step (forward, backward, waiting in Sync, optimizer) to stderr")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	for _, m := range strings.Split(*models, ",") {
		var sizes []int
		for _, f := range strings.Split(m, "-") {
			v, err := strconv.Atoi(f)
			if err != nil || v < 1 {
				return o, fmt.Errorf("-models: bad MLP %q", m)
			}
			sizes = append(sizes, v)
		}
		if len(sizes) < 2 {
			return o, fmt.Errorf("-models: %q needs at least two sizes", m)
		}
		o.models = append(o.models, sizes)
	}
	o.modes = strings.Split(*modes, ",")
	for _, m := range o.modes {
		if !slices.Contains([]string{"compute", "sync", "overlap", "comm"}, m) {
			return o, fmt.Errorf("-modes: unknown mode %q", m)
		}
	}
	if o.np < 1 || o.batch < 1 || o.steps < 1 || o.warmup < 0 || o.bucketMB < 1 {
		return o, fmt.Errorf("-np, -batch, -steps, -bucket-mb must be positive, -warmup not negative")
	}
	return o, nil
}

func runRank(ctx context.Context, o options, stdout, stderr io.Writer) error {
	comm, err := collective.Init(ctx)
	if err != nil {
		return err
	}
	defer comm.Close()
	if comm.Rank() == 0 && o.header {
		fmt.Fprintln(stdout, "impl,ranks,model,params,batch_per_rank,mode,step_ms,min_ms,samples_per_s")
	}
	for _, sizes := range o.models {
		if err := benchModel(ctx, comm, o, sizes, stdout, stderr); err != nil {
			return fmt.Errorf("rank %d, model %v: %w", comm.Rank(), sizes, err)
		}
	}
	return nil
}

// bench is one model's training step on synthetic data.
type bench struct {
	model  *nn.Sequential
	loss   *nn.SoftmaxCrossEntropy
	opt    *nn.ParamOptimizer
	dp     *parallel.DataParallel
	ready  func(*parallel.Param)
	x      []float32
	labels []int32
}

func benchModel(ctx context.Context, comm *collective.Comm, o options, sizes []int, stdout, stderr io.Writer) error {
	model, err := nn.NewMLP(sizes, 1)
	if err != nil {
		return err
	}
	loss, err := nn.NewSoftmaxCrossEntropy(sizes[len(sizes)-1])
	if err != nil {
		return err
	}
	opt, err := nn.NewParamOptimizer(&nn.SGD{LR: 0.01, Momentum: 0.9}, model.Params())
	if err != nil {
		return err
	}
	dp, err := parallel.NewDataParallel(ctx, comm, model.Params(), parallel.DataParallelOptions{BucketBytes: o.bucketMB << 20})
	if err != nil {
		return err
	}
	defer dp.Close()
	rng := rand.New(rand.NewPCG(uint64(comm.Rank()), 2))
	b := &bench{model: model, loss: loss, opt: opt, dp: dp, ready: dp.Ready,
		x: make([]float32, o.batch*sizes[0]), labels: make([]int32, o.batch)}
	for i := range b.x {
		b.x[i] = float32(rng.NormFloat64())
	}
	for i := range b.labels {
		b.labels[i] = int32(rng.IntN(sizes[len(sizes)-1]))
	}

	var phases [numPhases]float64
	for _, mode := range o.modes {
		for range o.warmup {
			if err := b.step(ctx, mode, &phases); err != nil {
				return err
			}
		}
	}
	// The modes take turns step by step, each step timed on its own after
	// a barrier: a machine whose load drifts (a shared one) slows every
	// mode alike, and medians drop the steps a neighbour's burst hit.
	nm := len(o.modes)
	samples := make([]float64, o.steps*nm)
	phaseSamples := make([][numPhases]float64, o.steps*nm) // this rank's
	for s := range o.steps {
		for m, mode := range o.modes {
			if err := collective.Barrier(ctx, comm); err != nil {
				return err
			}
			start := time.Now()
			if err := b.step(ctx, mode, &phaseSamples[s*nm+m]); err != nil {
				return err
			}
			samples[s*nm+m] = time.Since(start).Seconds()
		}
	}
	// A step takes as long as its slowest rank.
	if err := collective.AllReduce(ctx, comm, samples, collective.Max); err != nil {
		return err
	}
	times := make(map[string][]float64)
	for i, t := range samples {
		times[o.modes[i%nm]] = append(times[o.modes[i%nm]], t)
	}
	if comm.Rank() == 0 {
		name := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(sizes)), "-"), "[]")
		for _, mode := range o.modes {
			t := median(times[mode])
			fmt.Fprintf(stdout, "%s,%d,%s,%d,%d,%s,%.3f,%.3f,%.1f\n", o.label, comm.Size(), name, model.NumParams(), o.batch, mode,
				t*1e3, slices.Min(times[mode])*1e3, float64(o.batch*comm.Size())/t)
		}
		if o.phases {
			for m, mode := range o.modes {
				fmt.Fprintf(stderr, "ddp: rank 0, %s, %s: median", name, mode)
				for ph := range numPhases {
					var v []float64
					for s := range o.steps {
						v = append(v, phaseSamples[s*nm+m][ph])
					}
					fmt.Fprintf(stderr, " %s %.1f ms", phaseNames[ph], median(v)*1e3)
				}
				fmt.Fprintln(stderr)
			}
		}
	}
	return nil
}

// Phases of a step, timed on each rank for -phases.
const (
	phaseForward = iota
	phaseBackward
	phaseSync // waiting in Sync: the communication backward did not hide
	phaseOptimizer
	numPhases
)

var phaseNames = [numPhases]string{"forward", "backward", "sync", "optimizer"}

// step runs one step of mode and writes its phases' durations (seconds) to
// phases.
func (b *bench) step(ctx context.Context, mode string, phases *[numPhases]float64) error {
	*phases = [numPhases]float64{}
	t0 := time.Now()
	if mode == "comm" {
		err := b.dp.Sync(ctx)
		phases[phaseSync] = time.Since(t0).Seconds()
		return err
	}
	batch := len(b.labels)
	b.model.ZeroGrad()
	logits, err := b.model.Forward(b.x, batch)
	if err != nil {
		return err
	}
	if _, err := b.loss.Forward(logits, b.labels, 1/float32(batch)); err != nil {
		return err
	}
	t1 := time.Now()
	var ready func(*parallel.Param)
	if mode == "overlap" {
		ready = b.ready
	}
	if _, err := b.model.Backward(b.loss.Grad(), ready); err != nil {
		return err
	}
	t2 := time.Now()
	if mode != "compute" {
		if err := b.dp.Sync(ctx); err != nil {
			return err
		}
	}
	t3 := time.Now()
	err = b.opt.Step()
	t4 := time.Now()
	phases[phaseForward], phases[phaseBackward] = t1.Sub(t0).Seconds(), t2.Sub(t1).Seconds()
	phases[phaseSync], phases[phaseOptimizer] = t3.Sub(t2).Seconds(), t4.Sub(t3).Seconds()
	return err
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
