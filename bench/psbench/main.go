// Command psbench measures the two other ways of sharing a model against
// the ring, one rank of a job per process (under ringrun, or any launcher
// collective.Init understands). Rank 0 prints CSV rows
// (experiment,method,workers,servers,bytes,density,time_us,dense_share).
//
//	psbench -exp ringps -method ring          time per AllReduce of each -sizes
//	psbench -exp ringps -method ps -servers S time per Sync PushPull, the first S ranks serving
//	psbench -exp sparse                       SparseAllReducer per call at each -densities:
//	                                          the sparse path, the dense one, and the automatic choice
//	psbench -chart results.csv -o DIR         draws ringps.png and sparse.png from the CSV
//
// Every measurement is the slowest rank's (an AllReduce Max of each rank's
// own time), after a warm-up call. The sparse methods take turns, -rounds
// times, each turn at least -min-sample long, and the fastest turn counts:
// on a machine shared with other work, turns of the very same code differ
// by ±20% with the load, and the fastest is the least disturbed. bench/ps/run.sh runs the whole sweep on the
// network-namespace testbed.
package main

import (
	"context"
	"errors"
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
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/ps"
	"github.com/ringo-ml/ringo/shard"
)

type options struct {
	exp, method       string
	servers, chunk    int
	sizes             []int
	densities         []float64
	steps, rounds     int
	minSample         time.Duration
	rows, dim         int
	chart, chartTitle string
	out               string
	header            bool
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("psbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.exp, "exp", "ringps", "ringps or sparse")
	fs.StringVar(&o.method, "method", "ring", "ringps: ring or ps")
	fs.IntVar(&o.servers, "servers", 1, "ringps -method ps: the number of servers (the first ranks)")
	fs.IntVar(&o.chunk, "chunk", 0, "ringps -method ps: ps.Options.ChunkBytes (0: the default)")
	sizes := fs.String("sizes", "1M,16M,64M", "ringps: gradient sizes in bytes (K and M suffixes)")
	densities := fs.String("densities", "0.001,0.01,0.1,0.5", "sparse: fractions of the rows each rank touches")
	fs.IntVar(&o.steps, "steps", 3, "timed calls per measurement")
	fs.IntVar(&o.rounds, "rounds", 5, "sparse: turns of the three methods")
	fs.DurationVar(&o.minSample, "min-sample", 200*time.Millisecond, "sparse: a turn makes at least -steps calls, and more if they take less than this")
	fs.IntVar(&o.rows, "rows", 100000, "sparse: table rows")
	fs.IntVar(&o.dim, "dim", 64, "sparse: values per row")
	fs.BoolVar(&o.header, "header", false, "print the CSV header first")
	fs.StringVar(&o.chart, "chart", "", "draw the charts of this CSV instead of measuring")
	fs.StringVar(&o.chartTitle, "title", "", "-chart: a line under the charts' titles (machine, date)")
	fs.StringVar(&o.out, "o", ".", "-chart: the directory for ringps.png and sparse.png")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var errs []error
	for _, s := range strings.Split(*sizes, ",") {
		n, err := parseBytes(s)
		if err != nil || n < 4 {
			errs = append(errs, fmt.Errorf("-sizes: bad size %q", s))
		}
		o.sizes = append(o.sizes, n)
	}
	for _, s := range strings.Split(*densities, ",") {
		d, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil || d <= 0 || d > 1 {
			errs = append(errs, fmt.Errorf("-densities: bad density %q", s))
		}
		o.densities = append(o.densities, d)
	}
	switch {
	case o.exp != "ringps" && o.exp != "sparse":
		errs = append(errs, fmt.Errorf("-exp %q: want ringps or sparse", o.exp))
	case o.exp == "ringps" && o.method != "ring" && o.method != "ps":
		errs = append(errs, fmt.Errorf("-method %q: want ring or ps", o.method))
	case o.steps < 1 || o.rounds < 1 || o.rows < 1 || o.dim < 1 || o.servers < 1:
		errs = append(errs, errors.New("-steps, -rounds, -rows, -dim and -servers must be positive"))
	}
	return o, errors.Join(errs...)
}

func parseBytes(s string) (int, error) {
	s = strings.TrimSpace(s)
	mult := 1
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.Atoi(s)
	return n * mult, err
}

func main() { cli.Main(run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	return cli.Run("psbench", stderr, err, func() error {
		if o.chart != "" {
			return drawCharts(o.chart, o.out, o.chartTitle)
		}
		return measure(ctx, &o, stdout)
	})
}

func measure(ctx context.Context, o *options, stdout io.Writer) error {
	comm, err := collective.Init(ctx)
	if err != nil {
		return err
	}
	defer comm.Close()
	if comm.Rank() != 0 {
		stdout = io.Discard
	}
	if o.header {
		fmt.Fprintln(stdout, "experiment,method,workers,servers,bytes,density,time_us,dense_share")
	}
	switch {
	case o.exp == "sparse":
		return benchSparse(ctx, comm, o, stdout)
	case o.method == "ring":
		return benchRing(ctx, comm, o, stdout)
	}
	return benchPS(ctx, comm, o, stdout)
}

// slowest is the largest of every rank's d (every rank calls it).
func slowest(ctx context.Context, comm *collective.Comm, d time.Duration) (time.Duration, error) {
	v := []int64{int64(d)}
	err := collective.AllReduce(ctx, comm, v, collective.Max)
	return time.Duration(v[0]), err
}

func row(w io.Writer, exp, method string, workers, servers, bytes int, density float64, t time.Duration, denseShare float64) {
	fmt.Fprintf(w, "%s,%s,%d,%d,%d,%g,%.1f,%g\n", exp, method, workers, servers, bytes, density, float64(t.Nanoseconds())/1e3, denseShare)
}

// benchRing times the AllReduce (Avg, as data parallelism uses it) of each size.
func benchRing(ctx context.Context, comm *collective.Comm, o *options, out io.Writer) error {
	for _, size := range o.sizes {
		buf := make([]float32, size/4)
		if err := collective.AllReduce(ctx, comm, buf, collective.Avg); err != nil {
			return err
		}
		if err := collective.Barrier(ctx, comm); err != nil {
			return err
		}
		start := time.Now()
		for range o.steps {
			if err := collective.AllReduce(ctx, comm, buf, collective.Avg); err != nil {
				return err
			}
		}
		t, err := slowest(ctx, comm, time.Since(start)/time.Duration(o.steps))
		if err != nil {
			return err
		}
		row(out, "ringps", "ring", comm.Size(), 0, size, 0, t, 0)
	}
	return nil
}

// benchPS times a Sync PushPull of each size: every worker pushes its
// gradient, the servers average and apply it (SGD), every worker pulls the
// new values.
func benchPS(ctx context.Context, comm *collective.Comm, o *options, out io.Writer) error {
	opts := ps.Options{Servers: o.servers, Consistency: ps.Sync, Optimizer: sgd{lr: 1e-6}, ChunkBytes: o.chunk}
	for _, size := range o.sizes {
		n := size / 4
		params := []*parallel.Param{{Name: "grad", Data: make([]float32, n), Grad: make([]float32, n)}}
		var step func() error
		var done func() error
		if comm.Rank() < o.servers {
			srv, err := ps.NewServer(ctx, comm, params, opts)
			if err != nil {
				return err
			}
			step = func() error { return nil }
			done = func() error {
				err := srv.Serve(ctx)
				srv.Close()
				return err
			}
		} else {
			w, err := ps.NewWorker(ctx, comm, params, opts)
			if err != nil {
				return err
			}
			step = func() error { return w.PushPull(ctx).Wait() }
			done = w.Close
		}
		if err := step(); err != nil { // warm-up
			return err
		}
		if err := collective.Barrier(ctx, comm); err != nil {
			return err
		}
		start := time.Now()
		for range o.steps {
			if err := step(); err != nil {
				return err
			}
		}
		elapsed := time.Since(start) / time.Duration(o.steps)
		if comm.Rank() < o.servers {
			elapsed = 0
		}
		t, err := slowest(ctx, comm, elapsed)
		if err != nil {
			return err
		}
		if err := done(); err != nil {
			return err
		}
		row(out, "ringps", "ps", comm.Size()-o.servers, o.servers, size, 0, t, 0)
	}
	return nil
}

// sgd is plain SGD, the servers' cheapest update.
type sgd struct{ lr float32 }

func (sgd) StateLen(int) int { return 0 }

func (o sgd) Update(_ int, data, grad, _ []float32) error {
	for i, g := range grad {
		data[i] -= o.lr * g
	}
	return nil
}

// benchSparse times SparseAllReducer's three modes at each density: each
// rank touches density·rows distinct rows, its own random ones.
func benchSparse(ctx context.Context, comm *collective.Comm, o *options, out io.Writer) error {
	modes := []shard.SparseMode{shard.SparseGather, shard.SparseDense, shard.SparseAuto}
	reducers := make([]*shard.SparseAllReducer, len(modes))
	for i, m := range modes {
		var err error
		if reducers[i], err = shard.NewSparseAllReducer(comm, o.rows, o.dim, shard.SparseAllReducerOptions{Mode: m}); err != nil {
			return err
		}
	}
	rng := rand.New(rand.NewPCG(uint64(comm.Rank()), 7))
	for _, density := range o.densities {
		k := max(1, int(density*float64(o.rows)))
		ids := make([]int64, 0, k)
		for _, r := range rng.Perm(o.rows)[:k] {
			ids = append(ids, int64(r))
		}
		grads := make([]float32, k*o.dim)
		for i := range grads {
			grads[i] = rng.Float32()
		}
		times := make([][]time.Duration, len(modes))
		dense := make([]int, len(modes))
		calls := make([]int, len(modes))
		for i, red := range reducers {
			// Warm-up (the buffers grow), then one timed call: short calls
			// are batched so that a turn lasts -min-sample (the slowest
			// rank's time decides, so every rank makes the same calls).
			if _, err := red.AllReduce(ctx, ids, grads); err != nil {
				return err
			}
			start := time.Now()
			if _, err := red.AllReduce(ctx, ids, grads); err != nil {
				return err
			}
			t, err := slowest(ctx, comm, time.Since(start))
			if err != nil {
				return err
			}
			calls[i] = max(o.steps, min(1000, int(o.minSample/max(t, time.Microsecond))))
		}
		for range o.rounds {
			for i, red := range reducers {
				if err := collective.Barrier(ctx, comm); err != nil {
					return err
				}
				start := time.Now()
				for range calls[i] {
					if _, err := red.AllReduce(ctx, ids, grads); err != nil {
						return err
					}
					if red.Stats().LastDense {
						dense[i]++
					}
				}
				t, err := slowest(ctx, comm, time.Since(start)/time.Duration(calls[i]))
				if err != nil {
					return err
				}
				times[i] = append(times[i], t)
			}
		}
		for i, m := range modes {
			row(out, "sparse", m.String(), comm.Size(), 0, o.rows*o.dim*4, density, slices.Min(times[i]), float64(dense[i])/float64(o.rounds*calls[i]))
		}
	}
	return nil
}
