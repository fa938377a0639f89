// Command embedding trains a small recommendation model (matrix
// factorisation of a click log: user and item embeddings whose dot product
// predicts a click) data parallel on generated data (see data.go for the
// generator), twice: once with the tables split by rows across the ranks
// (shard.Embedding) and once with every rank holding whole tables whose
// sparse gradients are summed by shard.SparseAllReducer. It prints the loss
// going down and what each way costs per step and per rank: bytes of table
// traffic and of table memory.
//
//	go run ./examples/embedding                      4 ranks in this process, both ways
//	go run ./examples/embedding -np 8 -mode sharded
//	ringrun -np 4 ./embedding                        one rank per process under a launcher
//
// Both ways compute the same training (the same gradients, summed over the
// ranks, the same Adagrad on the touched rows), up to the order in which
// floating-point sums are taken, so their loss curves agree closely.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/cli"
	"github.com/ringo-ml/ringo/internal/localjob"
)

type options struct {
	np, users, items, dim, batch, steps, logEvery, eval int
	lr                                                  float64
	seed                                                uint64
	mode                                                string
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("embedding", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.np, "np", 4, "ranks to run in this process (ignored under a launcher)")
	fs.IntVar(&o.users, "users", 2000, "rows of the user table")
	fs.IntVar(&o.items, "items", 1000, "rows of the item table")
	fs.IntVar(&o.dim, "dim", 16, "embedding dimension")
	fs.IntVar(&o.batch, "batch", 1024, "global batch (samples per step, split over the ranks)")
	fs.IntVar(&o.steps, "steps", 600, "training steps")
	fs.IntVar(&o.logEvery, "log-every", 100, "print the loss every K steps")
	fs.IntVar(&o.eval, "eval", 8192, "held-out samples")
	fs.Float64Var(&o.lr, "lr", 0.1, "Adagrad learning rate (the bias: SGD with the same rate)")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the data and of the initial model")
	fs.StringVar(&o.mode, "mode", "both", "sharded, replicated or both")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(fs.NArg() == 0, "unexpected arguments %q", fs.Args())
	check(o.np >= 1, "-np %d: want 1 or more", o.np)
	check(o.users >= 1 && o.items >= 2 && o.dim >= 1, "-users %d -items %d -dim %d: want positive sizes (2 items or more)", o.users, o.items, o.dim)
	check(o.batch >= 1 && o.steps >= 1 && o.logEvery >= 1 && o.eval >= 1, "-batch, -steps, -log-every and -eval must be positive")
	check(o.lr > 0, "-lr %v: want a positive rate", o.lr)
	check(o.mode == "sharded" || o.mode == "replicated" || o.mode == "both", "-mode %q: want sharded, replicated or both", o.mode)
	return o, errors.Join(errs...)
}

func main() { cli.Main(run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	return cli.Run("embedding", stderr, err, func() error {
		if localjob.InJob() {
			return runProcess(ctx, &o, stdout)
		}
		_, err := runLocal(ctx, &o, stdout)
		return err
	})
}

// runProcess is one rank of a launcher's job.
func runProcess(ctx context.Context, o *options, stdout io.Writer) error {
	comm, err := collective.Init(ctx)
	if err != nil {
		return err
	}
	defer comm.Close()
	if comm.Rank() != 0 {
		stdout = io.Discard
	}
	_, err = runRank(ctx, comm, o, stdout)
	return err
}

// runLocal runs -np ranks as goroutines of this process and returns rank
// 0's results.
func runLocal(ctx context.Context, o *options, stdout io.Writer) ([]result, error) {
	comms, err := collective.Local(o.np)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, c := range comms {
			c.Close()
		}
	}()
	var results []result
	errs := make([]error, o.np)
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := io.Discard
			if r == 0 {
				out = stdout
			}
			res, err := runRank(ctx, c, o, out)
			if r == 0 {
				results = res
			}
			errs[r] = err
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("rank %d: %w", r, err)
		}
	}
	return results, nil
}

// runRank trains in each asked-for mode and prints rank 0's report.
func runRank(ctx context.Context, comm *collective.Comm, o *options, out io.Writer) ([]result, error) {
	gen := newGenerator(o.seed, o.users, o.items)
	modes := []string{o.mode}
	if o.mode == "both" {
		modes = []string{"sharded", "replicated"}
	}
	fmt.Fprintf(out, "embedding: %d ranks, %d users x %d items, dim %d, global batch %d, %d steps\n",
		comm.Size(), o.users, o.items, o.dim, o.batch, o.steps)
	var results []result
	for _, mode := range modes {
		var t tables
		var err error
		if mode == "sharded" {
			t, err = newSharded(ctx, comm, o)
		} else {
			t, err = newReplicated(comm, o)
		}
		if err != nil {
			return nil, err
		}
		m := newModel(comm, gen, o, t)
		res := result{mode: mode}
		if res.before, res.base, res.best, err = m.heldOutLoss(ctx); err != nil {
			return nil, err
		}
		sentBefore := t.bytesSent()
		for s := range o.steps {
			loss, err := m.step(ctx, s)
			if err != nil {
				return nil, fmt.Errorf("%s, step %d: %w", mode, s+1, err)
			}
			if (s+1)%o.logEvery == 0 {
				res.losses = append(res.losses, loss)
				fmt.Fprintf(out, "%s step=%d loss=%.4f\n", mode, s+1, loss)
			}
		}
		// Every rank's traffic, averaged.
		sent := []float64{float64(t.bytesSent() - sentBefore)}
		if err := collective.AllReduce(ctx, comm, sent, collective.Avg); err != nil {
			return nil, err
		}
		res.bytesPerStep = sent[0] / float64(o.steps)
		res.memory = t.memory()
		if res.after, _, _, err = m.heldOutLoss(ctx); err != nil {
			return nil, err
		}
		fmt.Fprintln(out, res)
		results = append(results, res)
	}
	if len(results) == 2 {
		fmt.Fprintf(out, "per step and rank, sharded tables move %.2fx the bytes of replicated ones and hold %.2fx the memory\n",
			results[0].bytesPerStep/results[1].bytesPerStep, float64(results[0].memory)/float64(results[1].memory))
	}
	return results, nil
}
