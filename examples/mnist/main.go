// Command mnist trains a multilayer perceptron on the MNIST digits with
// ringo, and is the project's end-to-end check: real data, a real model,
// real processes.
//
//	go run ./examples/mnist                       4 local ranks, data parallel, 2 epochs
//	go run ./examples/mnist -mode single          the same training in one process
//	go run ./examples/mnist -mode pipeline -stages 2 -microbatches 4 [-schedule gpipe|1f1b|interleaved]
//	                                              the MLP cut into 2 stages; 4 ranks = 2 pipelines × 2 replicas
//	go run ./examples/mnist -mode ps -servers 1   parameter servers (async by default; -consistency sync|ssp:K)
//	go run ./examples/mnist -mode fsdp            sharded (FSDP/ZeRO-3; -strategy grad|optim|none|hybrid)
//	ringrun -np 4 ./mnist -checkpoint ckpt        one rank per process under a launcher
//
// Standalone, -mode ddp starts -np copies of itself as the ranks of a local
// job (rank 0 serves the rendezvous); under ringrun, mpirun, torchrun or
// srun, each process is one rank of the launcher's job (collective.Init).
//
// The training is deterministic: the initial model and the sample order
// depend on -seed only, never on the number of ranks or the mode. A global
// batch is the same samples in every mode; rank r of N trains on the r-th
// N-th of it. -mode single and -mode ddp therefore print the same loss curve
// up to floating-point summation order, and a job resumed from a checkpoint
// ends with the same parameters, bit for bit, as one that never stopped.
package main

import (
	"context"
	"fmt"
	"io"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/cli"
	"github.com/ringo-ml/ringo/internal/localjob"
	"github.com/ringo-ml/ringo/internal/mnist"
)

func main() { cli.Main(run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	return cli.Run("mnist", stderr, err, func() error {
		switch {
		case localjob.InJob():
			return runRank(ctx, o, stdout, stderr)
		case o.mode == "single":
			return runSingle(ctx, o, stdout, stderr)
		}
		// -np copies of this program, each taking the first case above.
		return localjob.Spawn(ctx, o.np, args, nil, stdout, stderr)
	})
}

func runSingle(ctx context.Context, o options, stdout, stderr io.Writer) error {
	if o.npSet && o.np != 1 {
		return fmt.Errorf("-mode single runs in one process; -np %d needs -mode ddp", o.np)
	}
	train, test, err := mnist.Load(o.data)
	if err != nil {
		return err
	}
	return runJob(ctx, &job{opts: o, train: train, test: test, out: stdout, log: stderr})
}

// runRank is one rank of a job the environment describes.
func runRank(ctx context.Context, o options, stdout, stderr io.Writer) error {
	cfg, err := collective.ConfigFromEnv()
	if err != nil {
		return err
	}
	if o.mode == "single" {
		if cfg.Size != 1 {
			return fmt.Errorf("-mode single runs as one process, not as rank %d of %d (use -mode ddp)", cfg.Rank, cfg.Size)
		}
		return runSingle(ctx, o, stdout, stderr)
	}
	if o.npSet && o.np != cfg.Size {
		return fmt.Errorf("-np %d, but the launcher started %d ranks", o.np, cfg.Size)
	}
	train, test, err := mnist.Load(o.data)
	if err != nil {
		return err
	}
	comm, err := collective.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer comm.Close()
	out := stdout
	if comm.Rank() != 0 {
		out = io.Discard
	}
	if err := runJob(ctx, &job{opts: o, comm: comm, train: train, test: test, out: out, log: stderr}); err != nil {
		return fmt.Errorf("rank %d: %w", comm.Rank(), err)
	}
	return nil
}

// runJob trains; it is where the tests come in, with ranks of
// collective.Local and data loaded once.
func runJob(ctx context.Context, j *job) error { return train(ctx, j) }
