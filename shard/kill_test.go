package shard_test

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/shard"
)

func TestMain(m *testing.M) {
	testjob.RunRank(map[string]func() int{"gather": childRole("gather"), "reduce": childRole("reduce")})
	os.Exit(m.Run())
}

// childRole makes the test binary, started again, a rank of an FSDP job
// that loops on Gather ("gather") or on backward reductions ("reduce")
// until a call fails; then it prints the error, and whether it is an
// abort, and exits 3.
func childRole(mode string) func() int {
	return func() int {
		err := childTrain(mode)
		fmt.Printf("ERROR: aborted=%v: %v\n", errors.Is(err, collective.ErrAborted), err)
		return 3
	}
}

// childTrain is one rank of a FullShard job of 4 units of 2^20 values,
// looping until a call fails.
func childTrain(mode string) error {
	comm, err := collective.Init(ctx)
	if err != nil {
		return err
	}
	defer comm.Close()
	units := make([][]*parallel.Param, 4)
	for u := range units {
		units[u] = []*parallel.Param{{Name: fmt.Sprint("w", u), Data: make([]float32, 1<<20)}}
	}
	fs, err := shard.New(ctx, comm, units, shard.Options{})
	if err != nil {
		return err
	}
	defer fs.Close()
	for i := 0; ; i++ {
		if i == 3 {
			fmt.Println("training")
		}
		for u := range units {
			if mode == "gather" {
				if err := fs.Gather(ctx, u); err != nil {
					return err
				}
			} else {
				if err := fs.GatherBackward(ctx, u); err != nil {
					return err
				}
				if err := fs.ReduceGrads(ctx, u); err != nil {
					return err
				}
			}
			if err := fs.Release(u); err != nil {
				return err
			}
		}
		if mode != "gather" {
			if err := fs.Step(ctx, sgd()); err != nil {
				return err
			}
		}
	}
}

// TestKilledRankAbortsEveryRank: a rank process killed with SIGKILL while
// the job gathers, or while it reduces gradients, makes every other rank's
// call fail within 2 s with an error matching collective.ErrAborted that
// names the killed rank.
func TestKilledRankAbortsEveryRank(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 4 processes")
	}
	for _, mode := range []string{"gather", "reduce"} {
		t.Run(mode, func(t *testing.T) { killOne(t, mode, 4, 2) })
	}
}

func killOne(t *testing.T, mode string, n, victim int) {
	job := testjob.Start(t, testjob.Config{Ranks: n, Role: mode})
	job.AwaitFirst(t, 60*time.Second, func(int) string { return "training" })
	killed := job.Rank(victim).Kill(t)
	for r := range n {
		if r == victim {
			continue
		}
		line, at := job.Rank(r).Next(t, 30*time.Second)
		took := at.Sub(killed)
		t.Logf("rank %d failed %v after the kill: %s", r, took.Round(time.Millisecond), line)
		assert.Less(t, took, 2*time.Second, "rank %d", r)
		assert.Contains(t, line, "aborted=true", "rank %d", r)
		assert.Contains(t, line, fmt.Sprintf("rank %d", victim), "rank %d must name the killed rank", r)
	}
}
