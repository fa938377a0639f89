package testjob

import (
	"bufio"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/testlog"
)

// roleEnv names the role of a process Start started: the key of the
// function RunRank runs.
const roleEnv = "RINGO_TESTJOB_ROLE"

// RunRank makes this process a rank if Start started it: it runs the
// function of its role and exits with the code that returns. Otherwise it
// returns at once. TestMain calls it first.
func RunRank(roles map[string]func() int) {
	role, ok := os.LookupEnv(roleEnv)
	if !ok {
		return
	}
	run := roles[role]
	if run == nil {
		fmt.Fprintf(os.Stderr, "testjob: this test binary has no role %q\n", role)
		os.Exit(2)
	}
	os.Exit(run())
}

// Config says what processes Start starts.
type Config struct {
	Ranks int    // how many
	Role  string // the role each plays (a key of RunRank's roles)
	// Addr is the rendezvous address ("": a free loopback port).
	Addr string
	// Env returns rank's variables beyond the job's (nil: none). Every
	// rank gets RINGO_RANK, RINGO_WORLD_SIZE, RINGO_ADDR, RINGO_TOKEN (one
	// fresh token for the job) and RINGO_TIMEOUT=60s, from which
	// collective.Init forms the job; Env's come after and win.
	Env func(rank int) []string
}

// Job is the processes Start started.
type Job struct {
	ranks []*Rank
}

// Start starts the test binary once per rank, running no tests but
// RunRank's role; the processes are killed when the test ends, if they
// still run.
func Start(t testing.TB, cfg Config) *Job {
	t.Helper()
	addr := cfg.Addr
	if addr == "" {
		addr = FreeAddr(t)
	}
	token := rand.Text()
	j := &Job{}
	t.Cleanup(func() {
		for _, r := range j.ranks {
			_ = r.cmd.Process.Kill() // one that has exited already is fine
			<-r.exited
		}
	})
	for rank := range cfg.Ranks {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), roleEnv+"="+cfg.Role,
			"RINGO_RANK="+strconv.Itoa(rank), "RINGO_WORLD_SIZE="+strconv.Itoa(cfg.Ranks), "RINGO_ADDR="+addr,
			"RINGO_TOKEN="+token, "RINGO_TIMEOUT=60s")
		if cfg.Env != nil {
			cmd.Env = append(cmd.Env, cfg.Env(rank)...)
		}
		j.ranks = append(j.ranks, start(t, rank, cmd))
	}
	return j
}

// Rank is rank r's process.
func (j *Job) Rank(r int) *Rank { return j.ranks[r] }

// Ranks is how many processes the job has.
func (j *Job) Ranks() int { return len(j.ranks) }

// AwaitFirst waits until every rank r for which first(r) is not "" has
// said first(r) as its first line of standard output; it fails the test if
// one says something else first, exits, or is not done saying so within
// wait of the call.
func (j *Job) AwaitFirst(t testing.TB, wait time.Duration, first func(rank int) string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for r, rk := range j.ranks {
		if want := first(r); want != "" {
			got, _ := rk.Next(t, time.Until(deadline))
			require.Equal(t, want, got, "rank %d's first line; its output:\n%s", r, rk.Output())
		}
	}
}

// Rank is one process of a Job.
type Rank struct {
	rank  int
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   testlog.Buffer // standard output and error, as they come

	mu      sync.Mutex
	lines   []line        // standard output, line by line
	read    int           // lines Next has returned
	changed chan struct{} // closed at the next line or the end of output
	eof     bool

	exited chan struct{} // closed when the process has ended and its output with it
	end    time.Time     // when it did
	err    error         // what exec.Cmd.Wait said
}

type line struct {
	text string
	at   time.Time
}

func start(t testing.TB, rank int, cmd *exec.Cmd) *Rank {
	t.Helper()
	r := &Rank{rank: rank, cmd: cmd, exited: make(chan struct{})}
	cmd.Stderr = &r.out
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	r.stdin, err = cmd.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start(), "starting rank %d", rank)
	go r.readOutput(stdout)
	return r
}

// readOutput reads standard output into lines until the process closes
// it, then waits for the process.
func (r *Rank) readOutput(stdout io.Reader) {
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		now := time.Now()
		_, _ = r.out.Write(append(sc.Bytes(), '\n'))
		r.mu.Lock()
		r.lines = append(r.lines, line{sc.Text(), now})
		r.wake()
		r.mu.Unlock()
	}
	_, _ = io.Copy(&r.out, stdout) // past a line too long to scan: the rest, as it is
	r.mu.Lock()
	r.eof = true
	r.wake()
	r.mu.Unlock()
	r.err = r.cmd.Wait()
	r.end = time.Now()
	close(r.exited)
}

func (r *Rank) wake() {
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
}

// Next returns the rank's next line of standard output and when it came;
// it fails the test if the rank ends its output without one, or says
// nothing for wait.
func (r *Rank) Next(t testing.TB, wait time.Duration) (string, time.Time) {
	t.Helper()
	timeout := time.After(wait)
	for {
		r.mu.Lock()
		if r.read < len(r.lines) {
			l := r.lines[r.read]
			r.read++
			r.mu.Unlock()
			return l.text, l.at
		}
		if r.eof {
			r.mu.Unlock()
			t.Fatalf("rank %d ended its output without another line:\n%s", r.rank, r.Output())
		}
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		changed := r.changed
		r.mu.Unlock()
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("rank %d said nothing for %v:\n%s", r.rank, wait, r.Output())
		}
	}
}

// Exit waits for the process to end and returns when it did and what
// exec.Cmd.Wait said (nil for a zero exit code); it fails the test if the
// process still runs after wait.
func (r *Rank) Exit(t testing.TB, wait time.Duration) (time.Time, error) {
	t.Helper()
	select {
	case <-r.exited:
		return r.end, r.err
	case <-time.After(wait):
		t.Fatalf("rank %d still runs after %v:\n%s", r.rank, wait, r.Output())
		return time.Time{}, nil
	}
}

// ExitCode is the process's exit code once Exit has returned (-1 if a
// signal ended it).
func (r *Rank) ExitCode() int { return r.cmd.ProcessState.ExitCode() }

// Kill kills the process with SIGKILL and returns when.
func (r *Rank) Kill(t testing.TB) time.Time {
	t.Helper()
	at := time.Now()
	require.NoError(t, r.cmd.Process.Signal(syscall.SIGKILL), "killing rank %d", r.rank)
	return at
}

// Output is what the process has written so far, standard output and
// error together.
func (r *Rank) Output() string { return r.out.String() }

// Pid is the process's id.
func (r *Rank) Pid() int { return r.cmd.Process.Pid }

// Stdin is the process's standard input.
func (r *Rank) Stdin() io.Writer { return r.stdin }
