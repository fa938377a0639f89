package ps_test

import (
	"bufio"
	"fmt"
	"io"
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
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/ps"
)

// childEnv makes the test binary, re-executed, a rank of a parameter-server
// job: "sync" (workers train until they fail) or "async-allow" (Async with
// AllowWorkerLoss; workers pause after 5 steps until a line on stdin, then
// take 20 more and close).
const childEnv = "RINGO_PS_TEST_CHILD"

const childServers = 2

// runChild runs this process as a rank if it was started as one (and then
// exits); it reports false otherwise.
func runChild() bool {
	mode := os.Getenv(childEnv)
	if mode == "" {
		return false
	}
	if err := child(mode); err != nil {
		os.Exit(3)
	}
	os.Exit(0)
	return true
}

// failed prints the ERROR line the tests wait for the moment a call fails
// (before the deferred Closes, which linger so that peers read why).
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

// proc is one rank's process.
type proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // stdout, line by line; closed at exit
	log   *lockedBuffer
}

// startJobProcs starts n ranks of mode and waits until every worker says
// "training".
func startJobProcs(t *testing.T, n int, mode string) []*proc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	procs := make([]*proc, n)
	for r := range n {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+mode, "RINGO_TOKEN=ps-kill-test", "RINGO_TIMEOUT=60s",
			"RINGO_RANK="+strconv.Itoa(r), "RINGO_WORLD_SIZE="+strconv.Itoa(n), "RINGO_ADDR="+addr, "GOMAXPROCS=1")
		p := &proc{cmd: cmd, lines: make(chan string, 100), log: &lockedBuffer{}}
		cmd.Stderr = p.log
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		p.stdin, err = cmd.StdinPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				p.lines <- sc.Text()
			}
			close(p.lines)
		}()
		procs[r] = p
	}
	t.Cleanup(func() {
		for _, p := range procs {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	})
	deadline := time.After(60 * time.Second)
	for r := childServers; r < n; r++ {
		select {
		case line := <-procs[r].lines:
			require.Equal(t, "training", line, "rank %d: %s", r, procs[r].log)
		case <-deadline:
			t.Fatalf("rank %d did not start training within 60 s: %s", r, procs[r].log)
		}
	}
	return procs
}

// next returns p's next stdout line, or fails the test after wait.
func (p *proc) next(t *testing.T, r int, wait time.Duration) string {
	t.Helper()
	select {
	case line, ok := <-p.lines:
		require.True(t, ok, "rank %d exited without a word: %s", r, p.log)
		return line
	case <-time.After(wait):
		t.Fatalf("rank %d said nothing for %v: %s", r, wait, p.log)
	}
	return ""
}

// A server process killed with SIGKILL makes every worker fail within 2 s,
// naming the server.
func TestKilledServerProcessFailsEveryWorkerWithin2s(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 5 processes")
	}
	procs := startJobProcs(t, 5, "sync")
	const victim = 1
	killed := time.Now()
	require.NoError(t, procs[victim].cmd.Process.Signal(syscall.SIGKILL))
	for r := childServers; r < len(procs); r++ {
		line := procs[r].next(t, r, 30*time.Second)
		took := time.Since(killed)
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
	procs := startJobProcs(t, 5, "sync")
	const victim = 3 // worker 1
	for r := range childServers {
		require.Equal(t, "serving", procs[r].next(t, r, time.Second))
	}
	killed := time.Now()
	require.NoError(t, procs[victim].cmd.Process.Signal(syscall.SIGKILL))
	for r, p := range procs {
		if r == victim {
			continue
		}
		line := p.next(t, r, 30*time.Second)
		took := time.Since(killed)
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
	procs := startJobProcs(t, 5, "async-allow")
	const victim = 3
	for r := range childServers {
		require.Equal(t, "serving", procs[r].next(t, r, time.Second))
	}
	require.NoError(t, procs[victim].cmd.Process.Signal(syscall.SIGKILL))
	for r := childServers; r < len(procs); r++ {
		if r != victim {
			_, err := io.WriteString(procs[r].stdin, "go\n")
			require.NoError(t, err)
		}
	}
	for r, p := range procs {
		if r == victim {
			continue
		}
		want := "DONE clock=25"
		if r < childServers {
			want = "SERVED lost=[1]"
		}
		assert.Equal(t, want, p.next(t, r, 30*time.Second), "rank %d: %s", r, p.log)
		require.NoError(t, p.cmd.Wait(), "rank %d", r)
		if r < childServers {
			assert.Contains(t, p.log.String(), "lost a worker", "rank %d logs the loss", r)
		}
	}
}
