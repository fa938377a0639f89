// Package localjob starts a program's own copies as the ranks of a job on
// this machine, the way ringrun would, for commands that run standalone
// with -np N as well as under a launcher (examples, benchmarks).
package localjob

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
)

// InJob says whether this process is a rank of a job: a launcher (ringrun,
// torchrun, mpirun, srun) or Spawn started it.
func InJob() bool {
	for _, v := range []string{"RINGO_RANK", "RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"} {
		if os.Getenv(v) != "" {
			return true
		}
	}
	return false
}

// Spawn runs n copies of this program, with args, as the ranks of a local
// job: each gets the RINGO_* environment collective.Init reads (rank 0
// serves the rendezvous on a free loopback port, with a fresh token), plus
// env, and GOMAXPROCS = CPUs/n (at least 1) unless GOMAXPROCS is set. Their
// output goes to stdout and stderr. Spawn waits for all of them; when one
// fails it stops the others and returns that rank's error.
func Spawn(ctx context.Context, n int, args []string, env []string, stdout, stderr io.Writer) error {
	if n < 1 {
		return fmt.Errorf("localjob: %d ranks", n)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	token, jobID := randomHex(32), "local-"+randomHex(6)
	var threads []string
	if _, set := os.LookupEnv("GOMAXPROCS"); !set {
		threads = []string{"GOMAXPROCS=" + strconv.Itoa(max(1, runtime.NumCPU()/n))}
	}
	// Writers other than files are copied to by one goroutine per rank:
	// serialise them.
	stdout, stderr = serialised(stdout), serialised(stderr)
	cmds := make([]*exec.Cmd, n)
	for r := range n {
		cmd := exec.CommandContext(ctx, exe, args...)
		cmd.Env = append(os.Environ(),
			"RINGO_RANK="+strconv.Itoa(r),
			"RINGO_WORLD_SIZE="+strconv.Itoa(n),
			"RINGO_LOCAL_RANK="+strconv.Itoa(r),
			"RINGO_LOCAL_WORLD_SIZE="+strconv.Itoa(n),
			"RINGO_ADDR="+addr,
			"RINGO_TOKEN="+token,
			"RINGO_JOB_ID="+jobID,
		)
		cmd.Env = append(append(cmd.Env, threads...), env...)
		cmd.Stdout, cmd.Stderr = stdout, stderr
		cmds[r] = cmd
	}
	for r, cmd := range cmds {
		if err := cmd.Start(); err != nil {
			for _, started := range cmds[:r] {
				_ = started.Process.Kill()
				_ = started.Wait()
			}
			return fmt.Errorf("starting rank %d: %w", r, err)
		}
	}
	type exit struct {
		rank int
		err  error
	}
	exits := make(chan exit, n)
	for r, cmd := range cmds {
		go func() { exits <- exit{r, cmd.Wait()} }()
	}
	var first error
	for range cmds {
		e := <-exits
		if e.err != nil && first == nil {
			first = fmt.Errorf("rank %d: %w", e.rank, e.err)
			for r, cmd := range cmds {
				if r != e.rank {
					_ = cmd.Process.Kill() // ours; one that has exited already is fine
				}
			}
		}
	}
	return first
}

// lockedWriter makes a writer safe for several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// serialised returns w itself when the ranks can share it directly (a file:
// each rank's process writes to it on its own), else w behind a lock.
func serialised(w io.Writer) io.Writer {
	if _, ok := w.(*os.File); ok || w == nil {
		return w
	}
	return &lockedWriter{w: w}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
