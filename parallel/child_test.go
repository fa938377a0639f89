package parallel_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/parallel"
)

// childEnv makes the test binary, re-executed, a rank of a training job.
const childEnv = "RINGO_PARALLEL_TEST_CHILD"

// runChild runs this process as a rank if it was started as one (and then
// exits); it reports false otherwise.
func runChild() bool {
	if os.Getenv(childEnv) != "train" {
		return false
	}
	err := childTrain()
	fmt.Printf("ERROR: aborted=%v: %v\n", errors.Is(err, collective.ErrAborted), err)
	os.Exit(3)
	return true
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

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
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
	addr := freeAddr(t)
	type rank struct {
		cmd      *exec.Cmd
		training chan struct{}
		failed   chan string // the ERROR line
		out      strings.Builder
	}
	ranks := make([]*rank, n)
	for r := range n {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"=train", "RINGO_TOKEN=parallel-kill-test", "RINGO_TIMEOUT=60s",
			"RINGO_RANK="+strconv.Itoa(r), "RINGO_WORLD_SIZE="+strconv.Itoa(n), "RINGO_ADDR="+addr, "RINGO_TRANSPORT="+transport)
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		rk := &rank{cmd: cmd, training: make(chan struct{}), failed: make(chan string, 1)}
		require.NoError(t, cmd.Start())
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				switch line := sc.Text(); {
				case line == "training":
					close(rk.training)
				case strings.HasPrefix(line, "ERROR: "):
					rk.failed <- line
				}
			}
		}()
		ranks[r] = rk
	}
	t.Cleanup(func() {
		for _, rk := range ranks {
			_ = rk.cmd.Process.Kill()
			_ = rk.cmd.Wait()
		}
	})
	deadline := time.After(60 * time.Second)
	for r, rk := range ranks {
		select {
		case <-rk.training:
		case line := <-rk.failed:
			t.Fatalf("rank %d failed before training: %s", r, line)
		case <-deadline:
			t.Fatalf("rank %d did not start training within 60 s", r)
		}
	}
	killed := time.Now()
	require.NoError(t, ranks[victim].cmd.Process.Signal(syscall.SIGKILL))
	for r, rk := range ranks {
		if r == victim {
			continue
		}
		select {
		case line := <-rk.failed:
			took := time.Since(killed)
			t.Logf("rank %d failed %v after the kill: %s", r, took.Round(time.Millisecond), line)
			assert.Less(t, took, 2*time.Second, "rank %d", r)
			assert.Contains(t, line, "aborted=true", "rank %d", r)
			assert.Contains(t, line, fmt.Sprintf("rank %d", victim), "rank %d must name the killed rank", r)
		case <-time.After(30 * time.Second):
			t.Fatalf("rank %d still training 30 s after rank %d was killed", r, victim)
		}
	}
}
