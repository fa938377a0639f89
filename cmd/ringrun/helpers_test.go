//go:build unix

package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Binaries built once per test run by TestMain.
var (
	ringrunBin  string
	ringcheckBn string
)

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "ringrun-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		ringrunBin = filepath.Join(dir, "ringrun")
		ringcheckBn = filepath.Join(dir, "ringcheck")
		// ringrun itself is built with the race detector when the tests are.
		var flags []string
		if raceEnabled {
			flags = append(flags, "-race")
		}
		for _, b := range []struct {
			out, pkg string
			flags    []string
		}{
			{ringrunBin, ".", flags},
			{ringcheckBn, "./internal/ringcheck", nil},
		} {
			args := append(append([]string{"build", "-o", b.out}, b.flags...), b.pkg)
			cmd := exec.Command(goTool(), args...)
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "go %s: %v\n", strings.Join(args, " "), err)
				return 1
			}
		}
		return m.Run()
	}())
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

// testEnv is the test's environment without RINGO_* (a developer's shell
// may have some) and without the launchers' rank variables.
func testEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "RINGO_"), strings.HasPrefix(name, "OMPI_"),
			name == "RANK", name == "WORLD_SIZE", name == "MASTER_ADDR", name == "MASTER_PORT",
			strings.HasPrefix(name, "SLURM_"), strings.HasPrefix(name, "PMI_"):
			continue
		}
		env = append(env, kv)
	}
	// A race-enabled ringrun would otherwise sleep a second at exit.
	return append(env, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
}

// proc is a running ringrun (or mpirun) whose output the test reads.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan string // every line of stdout ("out: ...") and stderr ("err: ...")
	mu     sync.Mutex
	stdout strings.Builder
	stderr strings.Builder
	done   chan struct{} // closed when the process has exited and its output ended
	exited time.Time
	state  *os.ProcessState
}

// start runs name with args, failing the test if it does not start; the
// process is killed at the end of the test if it is still running.
func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startEnv(t, nil, name, args...)
}

// startEnv is start with env added to the process's environment.
func startEnv(t *testing.T, env []string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, cmd: exec.Command(name, args...), lines: make(chan string, 4096), done: make(chan struct{})}
	p.cmd.Env = append(testEnv(), env...)
	p.cmd.Dir = t.TempDir()
	var readers sync.WaitGroup
	var childEnds []*os.File
	for _, s := range []struct {
		tag string
		b   *strings.Builder
	}{{"out: ", &p.stdout}, {"err: ", &p.stderr}} {
		pr, pw, err := os.Pipe()
		require.NoError(t, err)
		childEnds = append(childEnds, pw)
		readers.Add(1)
		go func() {
			defer readers.Done()
			defer pr.Close()
			sc := bufio.NewScanner(pr)
			sc.Buffer(make([]byte, 64<<10), 4<<20)
			for sc.Scan() {
				p.mu.Lock()
				s.b.WriteString(sc.Text() + "\n")
				p.mu.Unlock()
				p.lines <- s.tag + sc.Text()
			}
		}()
	}
	p.cmd.Stdout, p.cmd.Stderr = childEnds[0], childEnds[1]
	// Its own process group, so that a test's signal does not go astray.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err := p.cmd.Start()
	for _, f := range childEnds {
		_ = f.Close()
	}
	require.NoError(t, err)
	exitedCh := make(chan struct{})
	go func() {
		_ = p.cmd.Wait()
		p.mu.Lock()
		p.exited, p.state = time.Now(), p.cmd.ProcessState
		p.mu.Unlock()
		close(exitedCh)
	}()
	go func() {
		<-exitedCh
		readers.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-exitedCh
		}
	})
	return p
}

func ringrun(t *testing.T, args ...string) *proc {
	t.Helper()
	return start(t, ringrunBin, args...)
}

// wait waits for the process to exit (and its output to end) and returns
// its exit code (128+N for a signal).
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		require.FailNowf(p.t, "timeout", "%s did not exit within %v\nstdout:\n%s\nstderr:\n%s", p.cmd.Path, timeout, p.out(), p.err())
	}
	ws := p.state.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

func (p *proc) out() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String()
}

func (p *proc) err() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

func (p *proc) exitTime() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exited
}

var pidLine = regexp.MustCompile(`^out: \[(\d+)\] rank (\d+) of (\d+) pid (\d+)$`)

// pids waits until all n ranks have printed their pid line and returns the
// pids by rank.
func (p *proc) pids(n int, timeout time.Duration) []int {
	p.t.Helper()
	pids := make([]int, n)
	got := 0
	deadline := time.After(timeout)
	for got < n {
		select {
		case l := <-p.lines:
			m := pidLine.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			rank, _ := strconv.Atoi(m[1])
			pid, _ := strconv.Atoi(m[4])
			require.Less(p.t, rank, n)
			require.Zero(p.t, pids[rank], "rank %d printed its pid twice", rank)
			pids[rank] = pid
			got++
		case <-deadline:
			require.FailNowf(p.t, "timeout", "only %d of %d ranks printed a pid within %v\nstdout:\n%s\nstderr:\n%s", got, n, timeout, p.out(), p.err())
		}
	}
	return pids
}

// requireGone checks that none of pids is a live process (nor a zombie:
// ringrun reaps what it starts).
func requireGone(t *testing.T, pids []int) {
	t.Helper()
	for rank, pid := range pids {
		err := syscall.Kill(pid, 0)
		require.ErrorIs(t, err, syscall.ESRCH, "rank %d (pid %d) is still there", rank, pid)
	}
}

// alive tells whether pid is a process that has not exited (a zombie,
// exited but not yet reaped by whoever inherited it, is not alive).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// requireAllExit waits until none of pids is alive.
func requireAllExit(t *testing.T, pids []int, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, pid := range pids {
			if alive(pid) {
				return false
			}
		}
		return true
	}, within, 20*time.Millisecond, "ranks %v outlived ringrun", pids)
}

// requireTokenHidden checks that the ranks pids share one RINGO_TOKEN of
// 32 random bytes, and that it is on no process's command line.
func requireTokenHidden(t *testing.T, pids []int) {
	t.Helper()
	var token string
	for _, pid := range pids {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		require.NoError(t, err)
		var tok string
		for _, kv := range strings.Split(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, "RINGO_TOKEN="); ok {
				tok = v
			}
		}
		require.Regexp(t, `^[0-9a-f]{64}$`, tok, "pid %d", pid)
		if token == "" {
			token = tok
		}
		require.Equal(t, token, tok, "one token per job")
	}
	cmdlines, err := filepath.Glob("/proc/[0-9]*/cmdline")
	require.NoError(t, err)
	for _, path := range cmdlines {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // gone meanwhile
		}
		require.NotContains(t, string(b), token, "the job token is on the command line of %s", path)
	}
}
