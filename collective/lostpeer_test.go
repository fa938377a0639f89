package collective_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/internal/testlog"
)

// TestKilledRankIsNamedOnEveryRank runs 4 ranks as OS processes in a loop of
// AllReduce and SIGKILLs one: every other rank must fail with ErrAborted
// naming the killed rank, within 2 s of the kill (asserted with margin),
// over TCP, over shared memory (which has no end of file of its own) and
// over a mixed mesh (two hosts of two ranks); and no process leaves a
// shared memory segment behind.
func TestKilledRankIsNamedOnEveryRank(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 4 processes")
	}
	for _, tr := range []struct {
		name string
		env  func(r int) []string
	}{
		{"tcp", func(int) []string { return []string{"RINGO_TRANSPORT=tcp"} }},
		{"shm", func(int) []string { return []string{"RINGO_TRANSPORT=shm"} }},
		{"mixed", func(r int) []string { return []string{"RINGO_HOST=" + twoHosts(r, 4)} }},
	} {
		t.Run(tr.name, func(t *testing.T) { killARank(t, tr.env) })
	}
}

func killARank(t *testing.T, env func(r int) []string) {
	const n, victim = 4, 2
	job := testjob.Start(t, testjob.Config{Ranks: n, Role: "loop", Env: env})
	job.AwaitFirst(t, 60*time.Second, func(int) string { return "looping" })
	killed := job.Rank(victim).Kill(t)
	for r := range n {
		if r == victim {
			continue
		}
		rank := job.Rank(r)
		at, _ := rank.Exit(t, 30*time.Second)
		took := at.Sub(killed)
		out := rank.Output()
		t.Logf("rank %d stopped %v after the kill", r, took.Round(time.Millisecond))
		assert.Less(t, took, 5*time.Second, "2 s is the bound; 5 s leaves margin for a loaded machine")
		assert.Contains(t, out, "communicator aborted", "rank %d", r)
		assert.Contains(t, out, "rank "+strconv.Itoa(victim), "rank %d must name the killed rank: %s", r, out)
		assert.Contains(t, out, "AllReduce", "rank %d must name the call", r)
		assert.Equal(t, 3, rank.ExitCode(), "rank %d: %s", r, out)
	}
	job.Rank(victim).Exit(t, 30*time.Second)
	pids := make([]int, n)
	for r := range n {
		pids[r] = job.Rank(r).Pid()
	}
	assert.Empty(t, segmentsOf(t, pids), "shared memory segments left behind")
}

// segmentsOf lists the shared memory segments in /dev/shm that processes
// pids created (a segment's name starts with ringo-PID-).
func segmentsOf(t testing.TB, pids []int) []string {
	t.Helper()
	entries, err := os.ReadDir("/dev/shm")
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		for _, pid := range pids {
			if strings.HasPrefix(e.Name(), fmt.Sprintf("ringo-%d-", pid)) {
				names = append(names, e.Name())
			}
		}
	}
	return names
}

// childLoop is a rank that runs AllReduce until it fails, then prints the
// error and exits 3.
func childLoop() int {
	c, err := collective.Init(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "init:", err)
		return 1
	}
	buf := make([]float32, 1<<16)
	for i := 0; ; i++ {
		if err := collective.AllReduce(ctx, c, buf, collective.Sum); err != nil {
			fmt.Println("ERROR:", err)
			c.Close()
			return 3
		}
		if i == 10 {
			fmt.Println("looping")
		}
	}
}

func TestStatusShowsCallsPeersAndTheCallInProgress(t *testing.T) {
	comms := local(t, 3, collective.Config{})
	for range 3 {
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			return collective.AllReduce(ctx, c, make([]float64, 10), collective.Sum)
		}))
	}
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error { return collective.Barrier(ctx, c) }))
	st := comms[0].Status()
	assert.Equal(t, uint64(4), st.Seq)
	assert.Empty(t, st.Running)
	require.Len(t, st.Recent, 4)
	assert.Equal(t, "AllReduce(float64, count=10, Sum, doubling)", st.Recent[0].Call)
	assert.Equal(t, "Barrier()", st.Recent[3].Call)
	require.Len(t, st.Peers, 2)
	for _, p := range st.Peers {
		assert.Equal(t, uint64(4), p.LastOp, "peer %d", p.Rank)
	}

	// Rank 2 does not come to the next call: the status says what rank 0 is
	// doing and that rank 2 is behind.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 2)
	for r := range 2 {
		w := &waitingCtx{Context: cctx, waiting: make(chan struct{})}
		go func() { errs <- collective.AllReduce(w, comms[r], make([]float32, 1000), collective.Max) }()
		<-w.waiting
	}
	st = comms[0].Status()
	assert.Equal(t, "AllReduce(float32, count=1000, Max, doubling)", st.Running)
	assert.Contains(t, st.String(), "running AllReduce(float32, count=1000, Max, doubling)")
	cancel()
	for range 2 {
		require.ErrorIs(t, <-errs, collective.ErrAborted)
	}
	st = comms[0].Status()
	assert.ErrorIs(t, st.Aborted, collective.ErrAborted)
	assert.True(t, st.Recent[len(st.Recent)-1].Err)
}

func TestSlowCallLogsWhichRankItWaitsFor(t *testing.T) {
	var sink testlog.Buffer
	comms := local(t, 2, collective.Config{SlowWarning: 50 * time.Millisecond, Logger: sink.Logger(slog.LevelInfo)})
	done := make(chan error, 1)
	go func() { done <- collective.AllReduce(ctx, comms[0], make([]int32, 7), collective.Sum) }()
	sink.WaitFor(t, "waiting for a rank", testTimeout) // rank 0 has said it waits for rank 1
	require.NoError(t, collective.AllReduce(ctx, comms[1], make([]int32, 7), collective.Sum))
	require.NoError(t, <-done)
	logged := sink.String()
	assert.Contains(t, logged, "waiting_for_rank=1")
	assert.Contains(t, logged, `call="AllReduce(int32, count=7, Sum, doubling)"`)
	assert.Contains(t, logged, "op=1")
}
