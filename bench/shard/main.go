// Command shard times sharded (package shard) against data-parallel
// (parallel.DataParallel) training steps of the same MLP on synthetic data,
// and prints the memory each strategy holds per rank.
//
//	shard -np 4                          4 local ranks it starts itself
//	ringrun -np 4 shard                  one rank of a launcher's job
//	shard -memory                        the memory table (in-process ranks, 1, 2 and 4)
//
// Modes, taking turns (-block steps each, then waiting for what they left
// in flight) so that they see the same machine:
//
//	compute          forward, backward and optimizer step, nothing communicated
//	ddp              DataParallel, each parameter marked Ready as backward finishes it
//	full             FullShard (ZeRO-3), Prefetch 1
//	full-noprefetch  FullShard without prefetch: each gather waited for where it is needed
//	grad             ShardGradOp (ZeRO-2)
//	optim            ShardOptimizer (ZeRO-1)
//	none             NoShard
//
// Rank 0 prints one CSV row per mode: the median over turns of the time
// per step (a turn's time is its slowest rank's) and its ratio to ddp's.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/cli"
	"github.com/ringo-ml/ringo/internal/localjob"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/shard"
)

type options struct {
	np     int
	block  int
	sizes  []int
	batch  int
	steps  int
	warmup int
	modes  []string
	label  string
	header bool
	memory bool
	sleep  time.Duration
}

var allModes = []string{"compute", "ddp", "full", "full-noprefetch", "grad", "optim", "none"}

func main() { cli.Main(run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	return cli.Run("shard", stderr, err, func() error {
		switch {
		case o.memory:
			return memoryTable(ctx, stdout)
		case localjob.InJob():
			return runRank(ctx, o, stdout)
		}
		return localjob.Spawn(ctx, o.np, args, nil, stdout, stderr)
	})
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("shard", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.np, "np", 2, "local ranks to start (ignored under a launcher)")
	model := fs.String("model", "784-2048-2048-2048-10", "MLP sizes (the default has 10.0M parameters in 4 units)")
	fs.IntVar(&o.batch, "batch", 8, "batch per rank (small: on shared CPUs the compute must not drown the communication)")
	fs.IntVar(&o.steps, "steps", 12, "timed steps per mode")
	fs.IntVar(&o.block, "block", 3, "steps per turn: the modes take turns, each running this many steps in a row (so that a step overlaps the next as in training) and then waiting for its collectives in flight")
	fs.IntVar(&o.warmup, "warmup", 2, "untimed steps per mode first")
	modes := fs.String("modes", "compute,ddp,full,full-noprefetch,grad,optim", "modes to time: "+strings.Join(allModes, ", "))
	fs.StringVar(&o.label, "label", "loopback", "testbed label for the CSV")
	fs.BoolVar(&o.header, "header", false, "print the CSV header first")
	fs.DurationVar(&o.sleep, "sleep", 0, "instead of computing, wait this long per layer in forward and again in backward, and step with plain SGD: the overlap of communication with computation, apart from the competition for CPUs")
	fs.BoolVar(&o.memory, "memory", false, "print the memory table (10M parameters, Adam, 1, 2 and 4 in-process ranks) and exit")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	for _, f := range strings.Split(*model, "-") {
		v, err := strconv.Atoi(f)
		if err != nil || v < 1 {
			return o, fmt.Errorf("-model: bad MLP %q", *model)
		}
		o.sizes = append(o.sizes, v)
	}
	if len(o.sizes) < 2 {
		return o, fmt.Errorf("-model %q needs at least two sizes", *model)
	}
	o.modes = strings.Split(*modes, ",")
	for _, m := range o.modes {
		if !slices.Contains(allModes, m) {
			return o, fmt.Errorf("-modes: unknown mode %q", m)
		}
	}
	if o.np < 1 || o.batch < 1 || o.steps < 1 || o.block < 1 || o.warmup < 0 {
		return o, fmt.Errorf("-np, -batch, -steps and -block must be positive, -warmup not negative")
	}
	return o, nil
}

// trainer is one mode's model and its step.
type trainer struct {
	model  *nn.Sequential
	loss   *nn.SoftmaxCrossEntropy
	step   func(ctx context.Context) error
	wait   func(ctx context.Context) error // for the collectives a step leaves running
	close  func()
	x      []float32
	labels []int32
}

func newTrainer(ctx context.Context, comm *collective.Comm, o options, mode string) (*trainer, error) {
	model, err := nn.NewMLP(o.sizes, 1)
	if err != nil {
		return nil, err
	}
	loss, err := nn.NewSoftmaxCrossEntropy(o.sizes[len(o.sizes)-1])
	if err != nil {
		return nil, err
	}
	t := &trainer{model: model, loss: loss, close: func() {}, wait: func(context.Context) error { return nil }}
	in, classes := o.sizes[0], o.sizes[len(o.sizes)-1]
	rng := rand.New(rand.NewPCG(uint64(comm.Rank()), 7))
	t.x, t.labels = make([]float32, o.batch*in), make([]int32, o.batch)
	for i := range t.x {
		t.x[i] = rng.Float32()
	}
	for i := range t.labels {
		t.labels[i] = int32(rng.IntN(classes))
	}
	scale := nn.GlobalMeanScale(o.batch*comm.Size(), comm.Size())
	var units [][]*parallel.Param
	var unitOf []int
	for _, l := range model.Layers {
		unitOf = append(unitOf, -1)
		if ps := l.Params(); len(ps) > 0 {
			unitOf[len(unitOf)-1] = len(units)
			units = append(units, ps)
		}
	}
	if o.sleep > 0 {
		return sleeper(ctx, comm, t, units, mode, o.sleep)
	}
	if mode == "compute" || mode == "ddp" {
		po, err := nn.NewParamOptimizer(nn.NewAdam(1e-3), model.Params())
		if err != nil {
			return nil, err
		}
		var ready func(*parallel.Param)
		var dp *parallel.DataParallel
		if mode == "ddp" {
			if dp, err = parallel.NewDataParallel(ctx, comm, model.Params(), parallel.DataParallelOptions{}); err != nil {
				return nil, err
			}
			ready = dp.Ready
			t.close = func() { dp.Close() }
		}
		t.step = func(ctx context.Context) error {
			model.ZeroGrad()
			logits, err := model.Forward(t.x, o.batch)
			if err != nil {
				return err
			}
			if _, err := loss.Forward(logits, t.labels, scale); err != nil {
				return err
			}
			if _, err := model.Backward(loss.Grad(), ready); err != nil {
				return err
			}
			if dp != nil {
				if err := dp.Sync(ctx); err != nil {
					return err
				}
			}
			return po.Step()
		}
		return t, nil
	}
	fs, err := shard.New(ctx, comm, units, shardOptions(mode))
	if err != nil {
		return nil, err
	}
	t.close = func() { fs.Close() }
	t.wait = fs.Wait
	opt := nn.NewAdam(1e-3)
	last := len(units) - 1
	t.step = func(ctx context.Context) error {
		h := t.x
		var err error
		for i, l := range model.Layers {
			u := unitOf[i]
			if u >= 0 {
				if err := fs.Gather(ctx, u); err != nil {
					return err
				}
			}
			if h, err = l.Forward(h, o.batch); err != nil {
				return err
			}
			if u >= 0 && u != last {
				if err := fs.Release(u); err != nil {
					return err
				}
			}
		}
		if _, err := loss.Forward(h, t.labels, scale); err != nil {
			return err
		}
		dy := loss.Grad()
		for i := len(model.Layers) - 1; i >= 0; i-- {
			u := unitOf[i]
			if u >= 0 {
				if err := fs.GatherBackward(ctx, u); err != nil {
					return err
				}
			}
			if dy, err = model.Layers[i].Backward(dy, i > 0, nil); err != nil {
				return err
			}
			if u >= 0 {
				if err := fs.ReduceGrads(ctx, u); err != nil {
					return err
				}
				if err := fs.Release(u); err != nil {
					return err
				}
			}
		}
		return fs.Step(ctx, opt)
	}
	return t, nil
}

func shardOptions(mode string) shard.Options {
	switch mode {
	case "full-noprefetch":
		return shard.Options{Prefetch: -1}
	case "grad":
		return shard.Options{Strategy: shard.ShardGradOp}
	case "optim":
		return shard.Options{Strategy: shard.ShardOptimizer}
	case "none":
		return shard.Options{Strategy: shard.NoShard}
	}
	return shard.Options{}
}

// sleeper makes t's step wait d per unit in forward and in backward instead
// of computing, with the same calls to DataParallel or FSDP, and plain SGD.
func sleeper(ctx context.Context, comm *collective.Comm, t *trainer, units [][]*parallel.Param, mode string, d time.Duration) (*trainer, error) {
	last := len(units) - 1
	sgd := &nn.SGD{LR: 1e-3}
	if mode == "compute" || mode == "ddp" {
		var all []*parallel.Param
		for _, ps := range units {
			all = append(all, ps...)
		}
		po, err := nn.NewParamOptimizer(sgd, all)
		if err != nil {
			return nil, err
		}
		var dp *parallel.DataParallel
		if mode == "ddp" {
			if dp, err = parallel.NewDataParallel(ctx, comm, all, parallel.DataParallelOptions{}); err != nil {
				return nil, err
			}
			t.close = func() { dp.Close() }
		}
		t.step = func(ctx context.Context) error {
			for range units {
				time.Sleep(d)
			}
			for u := last; u >= 0; u-- {
				time.Sleep(d)
				if dp != nil {
					for _, p := range units[u] {
						dp.Ready(p)
					}
				}
			}
			if dp != nil {
				if err := dp.Sync(ctx); err != nil {
					return err
				}
			}
			return po.Step()
		}
		return t, nil
	}
	fs, err := shard.New(ctx, comm, units, shardOptions(mode))
	if err != nil {
		return nil, err
	}
	t.close = func() { fs.Close() }
	t.wait = fs.Wait
	t.step = func(ctx context.Context) error {
		for u := range units {
			if err := fs.Gather(ctx, u); err != nil {
				return err
			}
			time.Sleep(d)
			if u != last {
				if err := fs.Release(u); err != nil {
					return err
				}
			}
		}
		for u := last; u >= 0; u-- {
			if err := fs.GatherBackward(ctx, u); err != nil {
				return err
			}
			time.Sleep(d)
			if err := fs.ReduceGrads(ctx, u); err != nil {
				return err
			}
			if err := fs.Release(u); err != nil {
				return err
			}
		}
		return fs.Step(ctx, sgd)
	}
	return t, nil
}

func runRank(ctx context.Context, o options, stdout io.Writer) error {
	comm, err := collective.Init(ctx)
	if err != nil {
		return err
	}
	defer comm.Close()
	trainers := make([]*trainer, len(o.modes))
	for i, m := range o.modes {
		if trainers[i], err = newTrainer(ctx, comm, o, m); err != nil {
			return fmt.Errorf("rank %d, mode %s: %w", comm.Rank(), m, err)
		}
		defer trainers[i].close()
	}
	times := make([][]float64, len(o.modes)) // ms per step, the slowest rank's
	slowest := []float64{0}
	turns := (o.steps + o.block - 1) / o.block
	for turn := range turns + (o.warmup+o.block-1)/o.block {
		for i, t := range trainers {
			if err := collective.Barrier(ctx, comm); err != nil {
				return err
			}
			start := time.Now()
			for range o.block {
				if err := t.step(ctx); err != nil {
					return fmt.Errorf("rank %d, mode %s: %w", comm.Rank(), o.modes[i], err)
				}
			}
			if err := t.wait(ctx); err != nil {
				return err
			}
			slowest[0] = float64(time.Since(start).Microseconds()) / 1e3 / float64(o.block)
			if err := collective.AllReduce(ctx, comm, slowest, collective.Max); err != nil {
				return err
			}
			if turn >= (o.warmup+o.block-1)/o.block {
				times[i] = append(times[i], slowest[0])
			}
		}
	}
	if comm.Rank() != 0 {
		return nil
	}
	if o.header {
		fmt.Fprintln(stdout, "testbed,ranks,model,params,batch_per_rank,mode,step_ms,vs_ddp")
	}
	ddp := 0.0
	if i := slices.Index(o.modes, "ddp"); i >= 0 {
		ddp = median(times[i])
	}
	params := 0
	for i := 1; i < len(o.sizes); i++ {
		params += o.sizes[i-1]*o.sizes[i] + o.sizes[i]
	}
	model := strings.Trim(strings.ReplaceAll(fmt.Sprint(o.sizes), " ", "-"), "[]")
	for i, m := range o.modes {
		ratio := ""
		if ddp > 0 {
			ratio = fmt.Sprintf("%.3f", median(times[i])/ddp)
		}
		fmt.Fprintf(stdout, "%s,%d,%s,%d,%d,%s,%.2f,%s\n", o.label, comm.Size(), model, params, o.batch, m, median(times[i]), ratio)
	}
	return nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// memoryTable prints, for Ψ = 10,010,000 parameters in 10 units (1000×1000
// weights and biases) with Adam, what each strategy holds per rank at N =
// 1, 2 and 4 (in-process ranks), beside ZeRO's formula, and how much the
// Go heap grew per rank.
func memoryTable(ctx context.Context, stdout io.Writer) error {
	const psi = 10 * (1000*1000 + 1000)
	fmt.Fprintln(stdout, "| strategy | N | params MB | grads MB | optimizer MB | held MB | ZeRO formula MB | buffers MB | heap growth per rank MB |")
	fmt.Fprintln(stdout, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, st := range []shard.Strategy{shard.NoShard, shard.ShardOptimizer, shard.ShardGradOp, shard.FullShard} {
		for _, n := range []int{1, 2, 4} {
			runtime.GC()
			before := heap()
			comms, err := collective.Local(n)
			if err != nil {
				return err
			}
			mems := make([]shard.Memory, n)
			fss := make([]*shard.FSDP, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for r, c := range comms {
				wg.Add(1)
				go func() {
					defer wg.Done()
					units := make([][]*parallel.Param, 10)
					for u := range units {
						units[u] = []*parallel.Param{
							{Name: fmt.Sprintf("fc%d.weight", u), Data: make([]float32, 1000*1000)},
							{Name: fmt.Sprintf("fc%d.bias", u), Data: make([]float32, 1000)},
						}
					}
					if fss[r], errs[r] = shard.New(ctx, c, units, shard.Options{Strategy: st}); errs[r] != nil {
						return
					}
					if errs[r] = fss[r].Step(ctx, nn.NewAdam(1e-3)); errs[r] == nil {
						mems[r] = fss[r].Memory()
					}
				}()
			}
			wg.Wait()
			runtime.GC()
			grown := heap() - before
			for r := range n {
				if fss[r] != nil {
					fss[r].Close()
				}
				comms[r].Close()
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			m := mems[0]
			p, nf := float64(psi), float64(n)
			formula := map[shard.Strategy]float64{shard.NoShard: 16 * p, shard.ShardOptimizer: 8*p + 8*p/nf,
				shard.ShardGradOp: 4*p + 12*p/nf, shard.FullShard: 16 * p / nf}[st]
			held := m.Params + m.Grads + m.OptimizerState
			fmt.Fprintf(stdout, "| %v | %d | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", st, n,
				mb(m.Params), mb(m.Grads), mb(m.OptimizerState), mb(held), formula/1e6, mb(m.Buffers), mb(grown/int64(n)))
		}
	}
	return nil
}

func mb(b int64) float64 { return float64(b) / 1e6 }

func heap() int64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
