package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/ringo-ml/ringo/internal/mnist"
	"github.com/ringo-ml/ringo/shard"
)

// options are the command's flags.
type options struct {
	np           int
	npSet        bool
	mode         string
	epochs       int
	steps        int
	batch        int
	lr           float64
	momentum     float64
	optimizer    string
	seed         uint64
	hidden       []int
	logEvery     int
	checkpoint   string
	data         string
	trainSamples int
	compression  string
	// -mode pipeline (mode_pipeline.go)
	stages       int
	microbatches int
	chunks       int
	schedule     string
	servers      int    // -mode ps
	consistency  string // -mode ps
	// -mode fsdp
	strategy          string
	prefetch          int
	groupSize         int
	shardedCheckpoint bool
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("mnist", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: mnist [flags]

Trains an MLP on MNIST. By default it starts 4 local rank processes and trains
with data parallelism (-mode ddp) for 2 epochs. Under ringrun, mpirun, torchrun
or srun each process is one rank of the launcher's job.

Rank 0 prints "step=K loss=X" (the mean loss over the global batch),
"epoch=E test_accuracy=A" and, at the end, "params_sha256=<hex>".

`)
		fs.PrintDefaults()
	}
	fs.IntVar(&o.np, "np", 4, "number of local rank processes to start (ignored under a launcher, which sets the world size)")
	fs.StringVar(&o.mode, "mode", "ddp", "how to train: single (one process), ddp (data parallel), fsdp (sharded data parallel), pipeline (model split into -stages; -np/-stages replicas) or ps (parameter servers)")
	fs.IntVar(&o.epochs, "epochs", 2, "passes over the training set")
	fs.IntVar(&o.steps, "steps", 0, "stop after this many optimizer steps in all (0: no limit)")
	fs.IntVar(&o.batch, "batch", 64, "global batch size, split over the ranks")
	fs.Float64Var(&o.lr, "lr", 0.03, "learning rate")
	fs.Float64Var(&o.momentum, "momentum", 0.9, "SGD momentum")
	fs.StringVar(&o.optimizer, "optimizer", "sgd", "sgd (with -momentum), adam or adamw")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the initial model and of the sample order")
	hidden := fs.String("hidden", "256,256", "hidden layer sizes, comma-separated")
	fs.IntVar(&o.logEvery, "log-every", 100, "print the loss every K steps")
	fs.StringVar(&o.checkpoint, "checkpoint", "", "directory to save a checkpoint in after every epoch, and to resume from when one is there")
	fs.StringVar(&o.data, "data", "", "directory with the MNIST files (default: the GoMNIST module in the Go module cache)")
	fs.IntVar(&o.trainSamples, "train-samples", 0, "train on the first N training images only (0: all 60000), for quick runs")
	fs.StringVar(&o.compression, "compression", "", "ddp: compress gradient traffic, bf16 or fp16")
	pipelineFlags(fs, &o)
	fs.IntVar(&o.servers, "servers", 1, "ps: how many of the -np ranks are servers (the first ones)")
	fs.StringVar(&o.consistency, "consistency", "async", "ps: async, sync or ssp:K (bounded staleness K)")
	fs.StringVar(&o.strategy, "strategy", "full", "fsdp: what each rank shards: full (parameters, gradients, optimizer state), grad (gradients and optimizer state), optim (optimizer state), none, or hybrid (full within groups of -group-size ranks)")
	fs.IntVar(&o.prefetch, "prefetch", 1, "fsdp: units whose gather starts ahead of use (0: none)")
	fs.IntVar(&o.groupSize, "group-size", 0, "fsdp -strategy hybrid: ranks per shard group (0: the ranks of each host, which must be as many on every host)")
	fs.BoolVar(&o.shardedCheckpoint, "sharded-checkpoint", false, "fsdp: save and resume sharded checkpoints (a directory beside -checkpoint's file, each rank writing its shard)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	fs.Visit(func(f *flag.Flag) { o.npSet = o.npSet || f.Name == "np" })
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	var err error
	o.hidden, err = parseSizes(*hidden)
	check(err == nil, "-hidden %q: want positive sizes separated by commas", *hidden)
	check(o.np >= 1, "-np %d: want 1 or more", o.np)
	check(o.mode == "single" || o.mode == "ddp" || o.mode == "fsdp" || o.mode == "pipeline" || o.mode == "ps", "-mode %q: want single, ddp, fsdp, pipeline or ps", o.mode)
	check(o.mode != "ps" || o.servers >= 1 && (!o.npSet || o.servers < o.np), "-servers %d: want 1 or more, leaving at least one worker of the -np ranks", o.servers)
	check(o.mode != "ps" || o.checkpoint == "", "-checkpoint: -mode ps does not save checkpoints")
	_, serr := shard.ParseStrategy(o.strategy)
	check(serr == nil, "-strategy %q: want full, grad, optim, none or hybrid", o.strategy)
	check(o.prefetch >= 0, "-prefetch %d: want 0 (none) or more", o.prefetch)
	check(o.groupSize >= 0, "-group-size %d: want 0 (ranks per host) or more", o.groupSize)
	check(o.epochs >= 1, "-epochs %d: want 1 or more", o.epochs)
	check(o.steps >= 0, "-steps %d: want 0 (no limit) or more", o.steps)
	check(o.batch >= 1, "-batch %d: want 1 or more", o.batch)
	check(o.lr > 0, "-lr %v: want a positive rate", o.lr)
	check(o.momentum >= 0 && o.momentum < 1, "-momentum %v: want [0, 1)", o.momentum)
	check(o.optimizer == "sgd" || o.optimizer == "adam" || o.optimizer == "adamw", "-optimizer %q: want sgd, adam or adamw", o.optimizer)
	check(o.logEvery >= 1, "-log-every %d: want 1 or more", o.logEvery)
	check(o.trainSamples >= 0 && o.trainSamples <= 60000, "-train-samples %d: want 0 (all) to 60000", o.trainSamples)
	check(o.compression == "" || o.compression == "bf16" || o.compression == "fp16", "-compression %q: want bf16 or fp16", o.compression)
	check(o.compression == "" || o.mode == "ddp", "-compression applies to -mode ddp only")
	errs = append(errs, checkPipelineFlags(&o)...)
	return o, errors.Join(errs...)
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("bad size %q", f)
		}
		out = append(out, v)
	}
	return out, nil
}

// layerSizes are the MLP's sizes, input to output.
func (o *options) layerSizes() []int {
	return append(append([]int{mnist.Pixels}, o.hidden...), mnist.Classes)
}
