package shard_test

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
	"github.com/ringo-ml/ringo/shard"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		err := childTrain(mode)
		fmt.Printf("ERROR: aborted=%v: %v\n", errors.Is(err, collective.ErrAborted), err)
		os.Exit(3)
	}
	os.Exit(m.Run())
}

// childEnv makes the test binary, re-executed, a rank of an FSDP job that
// loops on Gather ("gather") or on backward reductions ("reduce").
const childEnv = "RINGO_SHARD_TEST_CHILD"

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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	type rank struct {
		cmd      *exec.Cmd
		training chan struct{}
		failed   chan string // the ERROR line
	}
	ranks := make([]*rank, n)
	for r := range n {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+mode, "RINGO_TOKEN=shard-kill-test", "RINGO_TIMEOUT=60s",
			"RINGO_RANK="+strconv.Itoa(r), "RINGO_WORLD_SIZE="+strconv.Itoa(n), "RINGO_ADDR="+addr)
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
