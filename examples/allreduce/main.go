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
//	RINGO_RANK=0 RINGO_WORLD_SIZE=2 RINGO_ADDR=127.0.0.1:29500 go run ./examples/allreduce & ...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/collective"
)

func main() {
	local := flag.Int("local", 0, "run N ranks in this process instead of one rank from the environment")
	transport := flag.String("transport", "tcp", "with -local: tcp (loopback) or mem")
	sizes := flag.String("sizes", "4,64,1K,16K,256K,1M,4M,16M,64M", "buffer sizes per rank, in bytes (K, M suffixes)")
	budget := flag.Duration("budget", 500*time.Millisecond, "time to spend measuring each size")
	flag.Parse()

	bytes, err := parseSizes(*sizes)
	if err == nil {
		if *local > 0 {
			err = runLocal(*local, *transport, bytes, *budget)
		} else {
			err = runFromEnv(bytes, *budget)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "allreduce:", err)
		os.Exit(1)
	}
}

func runFromEnv(sizes []int, budget time.Duration) error {
	ctx := context.Background()
	comm, err := collective.Init(ctx)
	if err != nil {
		return err
	}
	defer comm.Close()
	return sweep(ctx, comm, sizes, budget, comm.Rank() == 0)
}

func runLocal(n int, transport string, sizes []int, budget time.Duration) error {
	ctx := context.Background()
	var comms []*collective.Comm
	var err error
	switch transport {
	case "mem":
		comms, err = collective.Local(n)
	case "tcp":
		comms, err = collective.LocalNetwork(ctx, n, collective.Config{Token: "demo"})
	default:
		err = fmt.Errorf("unknown transport %q", transport)
	}
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range comms {
			c.Close()
		}
	}()
	fmt.Printf("# %d ranks in one process over %s\n", n, transport)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r, c := range comms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = sweep(ctx, c, sizes, budget, r == 0)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// sweep runs every size on this rank; rank 0 prints. Every rank times the
// same number of calls, chosen by rank 0 and agreed with a Broadcast.
func sweep(ctx context.Context, c *collective.Comm, sizes []int, budget time.Duration, print bool) error {
	n := c.Size()
	if print {
		fmt.Printf("# float32 Sum AllReduce, %d ranks; time is the median over samples of the slowest rank\n", n)
		fmt.Printf("%12s %10s %12s %12s %12s %8s\n", "size(B)", "calls", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "check")
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
		check := "ok"
		for i := range buf {
			if want := float32(n*(n+1)/2 + n*(i%3)); buf[i] != want {
				check = fmt.Sprintf("FAIL at %d: %v != %v", i, buf[i], want)
				break
			}
		}
		if check != "ok" {
			return fmt.Errorf("rank %d, %d bytes: %s", c.Rank(), size, check)
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
			fmt.Printf("%12d %10d %12.2f %12.3f %12.3f %8s\n", size, inner*samples, med*1e6, algbw, algbw*2*float64(n-1)/float64(n), check)
		}
	}
	return nil
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		mult := 1
		switch {
		case strings.HasSuffix(f, "K"):
			mult, f = 1<<10, strings.TrimSuffix(f, "K")
		case strings.HasSuffix(f, "M"):
			mult, f = 1<<20, strings.TrimSuffix(f, "M")
		}
		v, err := strconv.Atoi(f)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("bad size %q", f)
		}
		out = append(out, v*mult)
	}
	return out, nil
}
