package parallel_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
)

// childRoles are what this test binary does when a test starts it again as
// a rank (testjob.Start).
var childRoles = map[string]func() int{"train": childTrainRole}

// childTrainRole trains until Sync fails, then prints the error and
// whether it is an abort, and exits 3.
func childTrainRole() int {
	err := childTrain()
	fmt.Printf("ERROR: aborted=%v: %v\n", errors.Is(err, collective.ErrAborted), err)
	return 3
}

// childTrain is a rank that trains until Sync fails: 3 parameters of 64K
// values, every parameter marked ready in backward order.
func childTrain() error {
	comm, err := collective.Init(ctx)
	if err != nil {
		return err
	}
	defer comm.Close()
	ps := params("a", 1<<16, "b", 1<<16, "c", 1<<16)
	dp, err := parallel.NewDataParallel(ctx, comm, ps, parallel.DataParallelOptions{FirstBucketBytes: 1 << 18})
	if err != nil {
		return err
	}
	defer dp.Close()
	for step := 0; ; step++ {
		for i := len(ps) - 1; i >= 0; i-- {
			for j := range ps[i].Grad {
				ps[i].Grad[j] = float32(comm.Rank() + j%7)
			}
			dp.Ready(ps[i])
		}
		if err := dp.Sync(ctx); err != nil {
			return err
		}
		if step == 5 {
			fmt.Println("training")
		}
	}
}

// A rank process killed with SIGKILL during training makes every other
// rank's Sync fail within 2 s with ErrAborted, naming the killed rank, over
// TCP and over shared memory (the default between processes of one host).
func TestKilledRankFailsEveryOtherRanksSync(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 4 processes")
	}
	for _, tr := range []string{"tcp", "shm"} {
		t.Run(tr, func(t *testing.T) { killDuringTraining(t, tr) })
	}
}

func killDuringTraining(t *testing.T, transport string) {
	const n, victim = 4, 2
	job := testjob.Start(t, testjob.Config{Ranks: n, Role: "train",
		Env: func(int) []string { return []string{"RINGO_TRANSPORT=" + transport} }})
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
