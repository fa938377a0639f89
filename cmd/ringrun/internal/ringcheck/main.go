// Command ringcheck is a ringo program that checks its own answers, for
// testing launchers (ringrun, mpirun, srun) and testbeds: it joins the job
// described by its environment (collective.Init), runs AllReduce with
// several types and reductions, Broadcast and Barrier on buffers of odd
// sizes, compares every element with the known answer, and exits 0 when all
// are right; otherwise it prints what was wrong and exits 1.
//
// It prints "rank R of N pid P" first (stdout), one line on stderr, and
// "rank R of N ok" last. Flags make it fail on purpose, for launcher tests:
// -exit-rank R -exit-code C exits rank R with code C before joining
// (only in restart -exit-attempt A, if given); -hang makes every rank block
// before joining.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ringo-ml/ringo/collective"
)

func main() {
	exitRank := flag.Int("exit-rank", -1, "this rank exits before joining")
	exitCode := flag.Int("exit-code", 3, "code -exit-rank exits with")
	exitAttempt := flag.Int("exit-attempt", -1, "only when RINGO_RESTART_COUNT is this (-1: always)")
	hang := flag.Bool("hang", false, "every rank blocks before joining, until killed")
	sizes := flag.String("sizes", "1,7,1000,65537", "comma-separated buffer lengths")
	iters := flag.Int("iters", 2, "times to run the whole check")
	timeout := flag.Duration("timeout", 60*time.Second, "bound on the whole run")
	flag.Parse()

	cfg, err := collective.ConfigFromEnv()
	if err != nil {
		fatalf("?", "%v", err)
	}
	who := fmt.Sprintf("rank %d of %d", cfg.Rank, cfg.Size)
	fmt.Printf("%s pid %d\n", who, os.Getpid())
	fmt.Fprintf(os.Stderr, "%s stderr\n", who)

	restart, _ := strconv.Atoi(os.Getenv("RINGO_RESTART_COUNT"))
	if cfg.Rank == *exitRank && (*exitAttempt < 0 || *exitAttempt == restart) {
		fmt.Printf("%s exiting with code %d at %d\n", who, *exitCode, time.Now().UnixNano())
		os.Exit(*exitCode)
	}
	if *hang {
		select {}
	}

	var ns []int
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 {
			fatalf(who, "-sizes: %q is not a length", s)
		}
		ns = append(ns, n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	comm, err := collective.New(ctx, cfg)
	if err != nil {
		fatalf(who, "joining: %v", err)
	}
	defer comm.Close()
	if comm.Rank() != cfg.Rank || comm.Size() != cfg.Size {
		fatalf(who, "communicator says rank %d of %d", comm.Rank(), comm.Size())
	}
	for it := range *iters {
		for _, n := range ns {
			if err := check(ctx, comm, n); err != nil {
				fatalf(who, "iteration %d, length %d: %v", it, n, err)
			}
		}
		if it == 0 && *iters > 2 {
			fmt.Printf("%s looping\n", who) // tests wait for this before breaking things
		}
	}
	if err := collective.Barrier(ctx, comm); err != nil {
		fatalf(who, "Barrier: %v", err)
	}
	fmt.Printf("%s ok\n", who)
}

func fatalf(who, format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s FAILED: %s\n", who, fmt.Sprintf(format, a...))
	os.Exit(1)
}

// check runs every collective once on buffers of n elements.
func check(ctx context.Context, c *collective.Comm, n int) error {
	r, size := c.Rank(), c.Size()

	// int32 Sum: r*100003 + i, so every rank's contribution shows.
	i32 := make([]int32, n)
	for i := range i32 {
		i32[i] = int32(r*100003 + i)
	}
	if err := collective.AllReduce(ctx, c, i32, collective.Sum); err != nil {
		return fmt.Errorf("AllReduce[int32](Sum): %w", err)
	}
	for i, got := range i32 {
		var want int32
		for q := range size {
			want += int32(q*100003 + i)
		}
		if got != want {
			return fmt.Errorf("AllReduce[int32](Sum)[%d] = %d, want %d", i, got, want)
		}
	}

	// float64 Sum of small integers: exact in any order.
	f64 := make([]float64, n)
	for i := range f64 {
		f64[i] = float64(r+1) * float64(i%977+1)
	}
	if err := collective.AllReduce(ctx, c, f64, collective.Sum); err != nil {
		return fmt.Errorf("AllReduce[float64](Sum): %w", err)
	}
	for i, got := range f64 {
		if want := float64(i%977+1) * float64(size*(size+1)/2); got != want {
			return fmt.Errorf("AllReduce[float64](Sum)[%d] = %v, want %v", i, got, want)
		}
	}

	// float32 Max and int64 Min: the winner moves from rank to rank.
	f32 := make([]float32, n)
	for i := range f32 {
		f32[i] = float32((i*7+r*13)%101) - 50
	}
	if err := collective.AllReduce(ctx, c, f32, collective.Max); err != nil {
		return fmt.Errorf("AllReduce[float32](Max): %w", err)
	}
	for i, got := range f32 {
		want := float32(-1e9)
		for q := range size {
			want = max(want, float32((i*7+q*13)%101)-50)
		}
		if got != want {
			return fmt.Errorf("AllReduce[float32](Max)[%d] = %v, want %v", i, got, want)
		}
	}
	i64 := make([]int64, n)
	for i := range i64 {
		i64[i] = int64((i*31+r*17)%257) - int64(r)<<40
	}
	if err := collective.AllReduce(ctx, c, i64, collective.Min); err != nil {
		return fmt.Errorf("AllReduce[int64](Min): %w", err)
	}
	for i, got := range i64 {
		want := int64(1) << 62
		for q := range size {
			want = min(want, int64((i*31+q*17)%257)-int64(q)<<40)
		}
		if got != want {
			return fmt.Errorf("AllReduce[int64](Min)[%d] = %d, want %d", i, got, want)
		}
	}

	// Broadcast from the last rank.
	root := size - 1
	b := make([]int64, n)
	for i := range b {
		b[i] = -1
		if r == root {
			b[i] = int64(i)*31 + 7
		}
	}
	if err := collective.Broadcast(ctx, c, b, root); err != nil {
		return fmt.Errorf("Broadcast[int64](root %d): %w", root, err)
	}
	for i, got := range b {
		if want := int64(i)*31 + 7; got != want {
			return fmt.Errorf("Broadcast[int64](root %d)[%d] = %d, want %d", root, i, got, want)
		}
	}
	if err := collective.Barrier(ctx, c); err != nil {
		return fmt.Errorf("Barrier: %w", err)
	}
	return nil
}
