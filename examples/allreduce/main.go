// Command allreduce is ringo's AllReduce demo and benchmark: float32 Sum over
// a sweep of buffer sizes, each result checked exactly, timings printed the
// way nccl-tests prints them (algbw = bytes/time, busbw = algbw·2(n-1)/n).
//
// With -local N it forms an N-rank job inside this process over TCP loopback
// (or the mem transport with -transport mem). Without it, it is one rank of a
// job described by the environment (ringrun, torchrun, mpirun or srun), so
// the same program runs as a real multi-process job:
//
//	go run ./examples/allreduce -local 4
//	go build -o bin/allreduce ./examples/allreduce && bin/ringrun -np 4 bin/allreduce
//
// The columns: size(B) is each rank's buffer; calls, how many were timed;
// time(us), the median time of one call, as the slowest rank saw it;
// algbw, size/time; busbw, algbw·2(n-1)/n, what each link carried (the
// figure to compare with the link's bandwidth, whatever n is); #wrong, the
// elements that differed from the exact answer, over all ranks (always 0,
// or the run fails).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/cli"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options is a parsed command line.
type options struct {
	local     int // ranks in this process; 0: one rank from the environment
	transport string
	sizes     []int
	budget    time.Duration
}

// run is the program with its arguments and outputs given; it returns the
// exit code: 2 for a bad command line, 1 for a failed run.
func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseArgs(args, stderr)
	return cli.Run("allreduce", stderr, err, func() error {
		if o.local > 0 {
			return runLocal(stdout, o)
		}
		return runFromEnv(stdout, o)
	})
}

func parseArgs(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("allreduce", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.local, "local", 0, "run `N` ranks in this process instead of one rank from the environment")
	fs.StringVar(&o.transport, "transport", "tcp", "with -local: tcp (loopback), quic (loopback), shm (shared memory) or mem (in-process pipes)")
	sizes := fs.String("sizes", "4,64,1K,16K,256K,1M,4M,16M,64M", "buffer sizes per rank, in bytes (K, M suffixes), multiples of 4")
	fs.DurationVar(&o.budget, "budget", 500*time.Millisecond, "time to spend measuring each size")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if given["local"] && o.local < 1 {
		return o, fmt.Errorf("-local %d: want at least 1 rank", o.local)
	}
	o.transport = strings.ToLower(o.transport)
	switch {
	case o.transport != "tcp" && o.transport != "quic" && o.transport != "shm" && o.transport != "mem":
		return o, fmt.Errorf("-transport %q: want tcp, quic, shm or mem", o.transport)
	case given["transport"] && o.local == 0:
		return o, errors.New("-transport applies to -local only; a rank of a job takes RINGO_TRANSPORT from its environment")
	}
	if o.budget <= 0 {
		return o, fmt.Errorf("-budget %v: want a positive duration", o.budget)
	}
	var err error
	o.sizes, err = parseSizes(*sizes)
	return o, err
}

func runFromEnv(stdout io.Writer, o options) error {
	ctx := context.Background()
	comm, err := collective.Init(ctx)
	if err != nil {
		if errors.Is(err, collective.ErrNoRank) {
			return fmt.Errorf("%w\n(for a job of 4 ranks in this one process, run: allreduce -local 4)", err)
		}
		return err
	}
	defer comm.Close()
	return sweep(ctx, stdout, comm, o.sizes, o.budget, comm.Rank() == 0)
}

func runLocal(stdout io.Writer, o options) error {
	ctx := context.Background()
	n := o.local
	var comms []*collective.Comm
	var err error
	if o.transport == "mem" {
		comms, err = collective.Local(n)
	} else {
		comms, err = collective.LocalNetwork(ctx, n, collective.Config{Token: "demo", Transport: o.transport})
	}
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range comms {
			c.Close()
		}
	}()
	fmt.Fprintf(stdout, "# %d ranks in one process over %s\n", n, o.transport)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = sweep(ctx, stdout, c, o.sizes, o.budget, r == 0)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// sweep runs every size on this rank; rank 0 prints. Every rank times the
// same number of calls, chosen by rank 0 and agreed with a Broadcast.
func sweep(ctx context.Context, stdout io.Writer, c *collective.Comm, sizes []int, budget time.Duration, print bool) error {
	n := c.Size()
	if print {
		fmt.Fprintf(stdout, "# float32 Sum AllReduce, %d ranks; time is the median over samples of the slowest rank\n", n)
		fmt.Fprintf(stdout, "%12s %10s %12s %12s %12s %8s\n", "size(B)", "calls", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong")
	}
	for _, size := range sizes {
		count := size / 4
		buf := make([]float32, count)
		// Correctness: rank+1+(i%3) summed over ranks, exact in float32.
		for i := range buf {
			buf[i] = float32(c.Rank() + 1 + i%3)
		}
		if err := collective.AllReduce(ctx, c, buf, collective.Sum); err != nil {
			return err
		}
		wrong := []int64{0}
		for i := range buf {
			if want := float32(n*(n+1)/2 + n*(i%3)); buf[i] != want {
				wrong[0]++
			}
		}
		// Every rank's count, summed: rank 0 prints them all.
		if err := collective.AllReduce(ctx, c, wrong, collective.Sum); err != nil {
			return err
		}
		if wrong[0] > 0 {
			if print {
				fmt.Fprintf(stdout, "%12d %10s %12s %12s %12s %8d\n", size, "-", "-", "-", "-", wrong[0])
			}
			return fmt.Errorf("%d bytes: %d elements wrong over all ranks", size, wrong[0])
		}
		clear(buf)
		// Calibrate: double the calls until they take a tenth of the budget
		// on the slowest rank. Every rank decides on the same all-reduced
		// time, so every rank makes the same calls.
		per := 0.0
		for calls := 1; ; calls *= 2 {
			t0 := time.Now()
			for range calls {
				if err := collective.AllReduce(ctx, c, buf, collective.Sum); err != nil {
					return err
				}
			}
			elapsed := []float64{time.Since(t0).Seconds()}
			if err := collective.AllReduce(ctx, c, elapsed, collective.Max); err != nil {
				return err
			}
			if per = elapsed[0] / float64(calls); elapsed[0] >= budget.Seconds()/10 {
				break
			}
		}
		inner := max(1, int(0.002/per))                                         // a sample lasts >= 2 ms
		samples := max(5, min(200, int(budget.Seconds()/(per*float64(inner))))) // and all take about the budget
		times := make([]float64, samples)
		for s := range samples {
			if err := collective.Barrier(ctx, c); err != nil {
				return err
			}
			t0 := time.Now()
			for range inner {
				if err := collective.AllReduce(ctx, c, buf, collective.Sum); err != nil {
					return err
				}
			}
			times[s] = time.Since(t0).Seconds() / float64(inner)
		}
		// The time of a sample is the slowest rank's.
		if err := collective.AllReduce(ctx, c, times, collective.Max); err != nil {
			return err
		}
		if print {
			slices.Sort(times)
			med := times[len(times)/2]
			algbw := float64(size) / med / 1e9
			fmt.Fprintf(stdout, "%12d %10d %12.2f %12.3f %12.3f %8d\n", size, inner*samples, med*1e6, algbw, algbw*2*float64(n-1)/float64(n), wrong[0])
		}
	}
	return nil
}

// parseSizes reads "4,64,1K,16M": byte counts, each a whole number of
// float32 values.
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, field := range strings.Split(s, ",") {
		f := strings.TrimSpace(field)
		mult := 1
		switch {
		case strings.HasSuffix(f, "K"):
			mult, f = 1<<10, strings.TrimSuffix(f, "K")
		case strings.HasSuffix(f, "M"):
			mult, f = 1<<20, strings.TrimSuffix(f, "M")
		}
		v, err := strconv.Atoi(f)
		switch {
		case err != nil || v < 0:
			return nil, fmt.Errorf("-sizes: bad size %q: want a byte count such as 4, 64K or 16M", field)
		case v > (1<<40)/mult:
			return nil, fmt.Errorf("-sizes: size %q is too large", field)
		case v*mult%4 != 0:
			return nil, fmt.Errorf("-sizes: size %q is not a whole number of float32 values (a multiple of 4 bytes)", field)
		}
		out = append(out, v*mult)
	}
	return out, nil
}
