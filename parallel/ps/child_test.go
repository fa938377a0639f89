package ps_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/ps"
)

// childRoles are what this test binary does when a test starts it again as
// a rank of a parameter-server job (testjob.Start): "sync" (workers train
// until they fail) or "async-allow" (Async with AllowWorkerLoss; workers
// pause after 5 steps until a line on stdin, then take 20 more and close).
var childRoles = map[string]func() int{"sync": childRole("sync"), "async-allow": childRole("async-allow")}

// childServers is how many of the job's ranks serve.
const childServers = 2

// childRole runs child in mode and exits 3 if it fails.
func childRole(mode string) func() int {
	return func() int {
		if err := child(mode); err != nil {
			return 3
		}
		return 0
	}
}

// failed prints the ERROR line the tests wait for the moment a call fails
// (before the deferred Closes).
func failed(err error) error {
	fmt.Printf("ERROR: %v\n", err)
	return err
}

func child(mode string) error {
	comm, err := collective.Init(ctx)
	if err != nil {
		return failed(err)
	}
	defer comm.Close()
	opts := ps.Options{Servers: childServers, Consistency: ps.Sync, Optimizer: &nn.SGD{LR: 1e-3}, ChunkBytes: 64 << 10}
	if mode == "async-allow" {
		opts.Consistency, opts.AllowWorkerLoss = ps.Async, true
	}
	params := []*parallel.Param{
		{Name: "a", Data: make([]float32, 1<<16), Grad: make([]float32, 1<<16)},
		{Name: "b", Data: make([]float32, 1<<15), Grad: make([]float32, 1<<15)},
	}
	if comm.Rank() < opts.Servers {
		srv, err := ps.NewServer(ctx, comm, params, opts)
		if err != nil {
			return failed(err)
		}
		defer srv.Close()
		fmt.Println("serving")
		if err := srv.Serve(ctx); err != nil {
			return failed(err)
		}
		fmt.Printf("SERVED lost=%v\n", srv.Status().Lost)
		return nil
	}
	w, err := ps.NewWorker(ctx, comm, params, opts)
	if err != nil {
		return failed(err)
	}
	defer w.Close()
	stdin := bufio.NewReader(os.Stdin)
	for step := 1; ; step++ {
		for _, p := range params {
			for i := range p.Grad {
				p.Grad[i] = float32((i+comm.Rank())%5) - 2
			}
		}
		if err := w.PushPull(ctx).Wait(); err != nil {
			return failed(err)
		}
		if step == 5 {
			fmt.Println("training")
			if mode == "async-allow" {
				if _, err := stdin.ReadString('\n'); err != nil {
					return failed(err)
				}
			}
		}
		if mode == "async-allow" && step == 25 {
			if err := w.Close(); err != nil {
				return failed(err)
			}
			fmt.Printf("DONE clock=%d\n", w.Clock())
			return nil
		}
	}
}

// startJobProcs starts n ranks of mode and waits until every worker says
// "training".
func startJobProcs(t *testing.T, n int, mode string) *testjob.Job {
	t.Helper()
	job := testjob.Start(t, testjob.Config{Ranks: n, Role: mode, Env: func(int) []string { return []string{"GOMAXPROCS=1"} }})
	job.AwaitFirst(t, 60*time.Second, func(r int) string {
		if r < childServers {
			return ""
		}
		return "training"
	})
	return job
}

// requireServing checks that every server has said it serves.
func requireServing(t *testing.T, job *testjob.Job) {
	t.Helper()
	for r := range childServers {
		line, _ := job.Rank(r).Next(t, time.Second)
		require.Equal(t, "serving", line)
	}
}

// A server process killed with SIGKILL makes every worker fail within 2 s,
// naming the server.
func TestKilledServerProcessFailsEveryWorkerWithin2s(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 5 processes")
	}
	job := startJobProcs(t, 5, "sync")
	const victim = 1
	killed := job.Rank(victim).Kill(t)
	for r := childServers; r < job.Ranks(); r++ {
		line, at := job.Rank(r).Next(t, 30*time.Second)
		took := at.Sub(killed)
		t.Logf("worker rank %d failed %v after the kill: %s", r, took.Round(time.Millisecond), line)
		assert.Less(t, took, failBound, "rank %d", r)
		assert.True(t, strings.HasPrefix(line, "ERROR: "), "rank %d: %s", r, line)
		assert.Contains(t, line, "server 1 (rank 1)", "rank %d must name the killed server", r)
	}
}

// A worker process killed under Sync makes every server fail the step
// within 2 s, naming the worker; the other workers then fail with the
// servers' reason, which names it too.
func TestKilledWorkerProcessFailsEveryServerUnderSync(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 5 processes")
	}
	job := startJobProcs(t, 5, "sync")
	const victim = 3 // worker 1
	requireServing(t, job)
	killed := job.Rank(victim).Kill(t)
	for r := range job.Ranks() {
		if r == victim {
			continue
		}
		line, at := job.Rank(r).Next(t, 30*time.Second)
		took := at.Sub(killed)
		t.Logf("rank %d failed %v after the kill: %s", r, took.Round(time.Millisecond), line)
		assert.Less(t, took, failBound, "rank %d", r)
		assert.True(t, strings.HasPrefix(line, "ERROR: "), "rank %d: %s", r, line)
		assert.Contains(t, line, "worker 1 (rank 3)", "rank %d must name the killed worker", r)
	}
}

// Under Async with AllowWorkerLoss a killed worker process is reported and
// the others train on to the end; the servers end cleanly, listing it as
// lost.
func TestKilledWorkerProcessIsSurvivableWithAllowWorkerLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 5 processes")
	}
	job := startJobProcs(t, 5, "async-allow")
	const victim = 3
	requireServing(t, job)
	job.Rank(victim).Kill(t)
	for r := childServers; r < job.Ranks(); r++ {
		if r != victim {
			_, err := io.WriteString(job.Rank(r).Stdin(), "go\n")
			require.NoError(t, err)
		}
	}
	for r := range job.Ranks() {
		if r == victim {
			continue
		}
		rank := job.Rank(r)
		want := "DONE clock=25"
		if r < childServers {
			want = "SERVED lost=[1]"
		}
		line, _ := rank.Next(t, 30*time.Second)
		assert.Equal(t, want, line, "rank %d: %s", r, rank.Output())
		_, err := rank.Exit(t, 30*time.Second)
		require.NoError(t, err, "rank %d", r)
		if r < childServers {
			assert.Contains(t, rank.Output(), "lost a worker", "rank %d logs the loss", r)
		}
	}
}
