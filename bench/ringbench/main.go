// Command ringbench is ringo's nccl-tests: it times a collective over a sweep
// of buffer sizes, checks every result against the exact expected values, and
// prints one row per size (time, algbw, busbw, #wrong) and the average bus
// bandwidth; --csv and --json write the same rows for machines, --plot draws
// them, --sim extrapolates them to large jobs with an alpha-beta model.
//
//	ringbench -np 4                          4 local processes (it starts them itself)
//	ringbench -np 4 -inproc -o allgather     4 ranks as goroutines of one process
//	ringrun -np 4 ringbench -b 1K -e 16M     one rank of a job (also mpirun, torchrun, srun)
//
// Run ringbench -h for the flags.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/term"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/cli"
	"github.com/ringo-ml/ringo/internal/localjob"
)

func main() { cli.Main(run) }

// run is ringbench with its arguments and outputs given; it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseArgs(args, stderr)
	if err == nil && !localjob.InJob() && o.root >= o.np {
		err = fmt.Errorf("--root %d is not one of the %d ranks", o.root, o.np)
	}
	return cli.Run("ringbench", stderr, err, func() error {
		switch {
		case localjob.InJob():
			return runRank(ctx, &o, stdout, stderr)
		case o.inproc:
			return runInProcess(ctx, &o, stdout, stderr)
		}
		return spawn(ctx, &o, args, stdout, stderr)
	})
}

// runRank is one rank of a job described by the environment; rank 0 reports.
func runRank(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	cfg, err := collective.ConfigFromEnv()
	if err != nil {
		return err
	}
	if o.algoSet {
		cfg.Algorithm = o.algo
	} else if cfg.Algorithm != "" {
		o.algo = cfg.Algorithm // the launcher's RINGO_ALGO, for the report
	}
	if o.compression != "" {
		cfg.Compression = o.compression
	}
	c, err := collective.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	var bar *progressBar
	if c.Rank() == 0 && !o.quiet && isTerminal(os.Stderr) {
		bar = &progressBar{w: stderr}
	}
	rows, err := sweep(ctx, c, o, bar.update)
	bar.done()
	if err != nil {
		return fmt.Errorf("rank %d: %w", c.Rank(), err)
	}
	if c.Rank() != 0 {
		return nil
	}
	reportCompression(c, stderr)
	return report(o, c.Size(), "processes", rows, stdout)
}

// runInProcess runs o.np ranks as goroutines, over TCP loopback or mem.
func runInProcess(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	var bar *progressBar
	if !o.quiet && isTerminal(os.Stderr) {
		bar = &progressBar{w: stderr}
	}
	rows, err := sweepInProcess(ctx, o, bar.update)
	bar.done()
	if err != nil {
		return err
	}
	return report(o, o.np, "goroutines", rows, stdout)
}

// sweepInProcess forms o.np ranks in this process and returns rank 0's rows.
func sweepInProcess(ctx context.Context, o *options, progress func(int, int, int64)) ([]row, error) {
	comms, err := formInProcess(ctx, o.np, o.transport, o.algo, o.compression)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, c := range comms {
			c.Close()
		}
	}()
	defer reportCompression(comms[0], os.Stderr) // before the closes
	rows := make([][]row, len(comms))
	errs := make([]error, len(comms))
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := progress
			if r != 0 {
				p = nil
			}
			rows[r], errs[r] = sweep(ctx, c, o, p)
			if errs[r] != nil {
				errs[r] = fmt.Errorf("rank %d: %w", r, errs[r])
			}
		}()
	}
	wg.Wait()
	return rows[0], errors.Join(errs...)
}

func formInProcess(ctx context.Context, n int, transport, algo, compression string) ([]*collective.Comm, error) {
	if transport == "mem" {
		return collective.LocalConfig(n, collective.Config{Algorithm: algo, Compression: compression})
	}
	return collective.LocalNetwork(ctx, n, collective.Config{Token: rand.Text(), Transport: transport, Algorithm: algo, Compression: compression})
}

// spawn starts o.np copies of this program as the ranks of a local job, with
// the environment ringrun would give them (rank 0 serves the rendezvous),
// and waits for them. When one fails, the others are stopped. The ranks
// write to stdout and stderr (inherited directly when they are files, so
// that rank 0 sees the terminal and draws its progress bar).
func spawn(ctx context.Context, o *options, args []string, stdout, stderr io.Writer) error {
	return localjob.Spawn(ctx, o.np, args, []string{"RINGO_TRANSPORT=" + o.transport, "RINGO_ALGO=" + o.algo}, stdout, stderr)
}

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }
