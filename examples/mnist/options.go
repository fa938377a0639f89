package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/ringo-ml/ringo/internal/mnist"
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
	layers       []int // the MLP's sizes, input to output (-hidden)
	logEvery     int
	checkpoint   string
	data         string
	trainSamples int
	modes        map[string]mode // every mode, with its own flags
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
	o.modes = defineModes(fs, &o)
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
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	fs.Visit(func(f *flag.Flag) { o.npSet = o.npSet || f.Name == "np" })
	var c checker
	var err error
	o.layers, err = mnist.MLPSizes(*hidden)
	c.check(err == nil, "-hidden %q: want positive sizes separated by commas", *hidden)
	c.check(o.np >= 1, "-np %d: want 1 or more", o.np)
	c.check(o.epochs >= 1, "-epochs %d: want 1 or more", o.epochs)
	c.check(o.steps >= 0, "-steps %d: want 0 (no limit) or more", o.steps)
	c.check(o.batch >= 1, "-batch %d: want 1 or more", o.batch)
	c.check(o.lr > 0, "-lr %v: want a positive rate", o.lr)
	c.check(o.momentum >= 0 && o.momentum < 1, "-momentum %v: want [0, 1)", o.momentum)
	c.check(o.optimizer == "sgd" || o.optimizer == "adam" || o.optimizer == "adamw", "-optimizer %q: want sgd, adam or adamw", o.optimizer)
	c.check(o.logEvery >= 1, "-log-every %d: want 1 or more", o.logEvery)
	c.check(o.trainSamples >= 0 && o.trainSamples <= 60000, "-train-samples %d: want 0 (all) to 60000", o.trainSamples)
	errs := append(c, checkModes(&o)...)
	return o, errors.Join(errs...)
}
