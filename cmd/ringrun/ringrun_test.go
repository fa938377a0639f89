//go:build unix

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The bound the issue sets on noticing a failed rank and stopping the job.
const failBound = 5 * time.Second

func TestJobSucceedsWithPrefixedOutput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := ringrun(t, "-np", "4", "--output-dir", dir, "--", ringcheckBn, "-sizes", "0,1,7,1000,65537")
	require.Equal(t, 0, p.wait(60*time.Second), "stdout:\n%s\nstderr:\n%s", p.out(), p.err())
	out, errOut := p.out(), p.err()
	for r := range 4 {
		assert.Regexp(t, fmt.Sprintf(`(?m)^\[%d\] rank %d of 4 pid \d+$`, r, r), out)
		assert.Contains(t, out, fmt.Sprintf("[%d] rank %d of 4 ok\n", r, r))
		assert.Contains(t, errOut, fmt.Sprintf("[%d] rank %d of 4 stderr\n", r, r))
		assert.NotContains(t, out, fmt.Sprintf("rank %d of 4 stderr", r), "stderr leaked into stdout")

		// --output-dir has each rank's own lines, unprefixed.
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("rank.%d.stdout", r)))
		require.NoError(t, err)
		assert.Regexp(t, fmt.Sprintf(`^rank %d of 4 pid \d+\nrank %d of 4 ok\n$`, r, r), string(b))
		b, err = os.ReadFile(filepath.Join(dir, fmt.Sprintf("rank.%d.stderr", r)))
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprintf("rank %d of 4 stderr\n", r), string(b))
	}
	// Every line is whole and prefixed, on both streams.
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		assert.Regexp(t, `^\[[0-3]\] rank [0-3] of 4 `, l)
	}
	for _, l := range strings.Split(strings.TrimSuffix(errOut, "\n"), "\n") {
		assert.Regexp(t, `^(\[[0-3]\] rank [0-3] of 4 stderr|ringrun: .*)$`, l)
	}
}

// exitLine is what ringcheck prints just before exiting on purpose.
var exitLine = regexp.MustCompile(`(?m)^\[(\d+)\] rank \d+ of \d+ exiting with code \d+ at (\d+)$`)

func TestRankExitCodeStopsJob(t *testing.T) {
	t.Parallel()
	// Rank 2 exits 3; the others would wait for it at the rendezvous for
	// 60 s: ringrun must stop them.
	p := ringrun(t, "-np", "4", "--", ringcheckBn, "-exit-rank", "2", "-exit-code", "3")
	code := p.wait(30 * time.Second)
	assert.Equal(t, 3, code, "ringrun exits with the failed rank's code")
	assert.Contains(t, p.err(), "ringrun: rank 2 (pid ")
	assert.Contains(t, p.err(), "exited with code 3")
	m := exitLine.FindStringSubmatch(p.out())
	require.NotNil(t, m, p.out())
	nanos, _ := strconv.ParseInt(m[2], 10, 64)
	took := p.exitTime().Sub(time.Unix(0, nanos))
	t.Logf("rank 2 exit 3 -> ringrun exit: %v", took)
	assert.Less(t, took, failBound)
}

func TestRankKilledStopsJob(t *testing.T) {
	t.Parallel()
	p := ringrun(t, "-np", "4", "--", ringcheckBn, "-hang")
	pids := p.pids(4, 30*time.Second)
	killed := time.Now()
	require.NoError(t, syscall.Kill(pids[1], syscall.SIGKILL))
	code := p.wait(30 * time.Second)
	took := p.exitTime().Sub(killed)
	t.Logf("rank 1 SIGKILL -> ringrun exit: %v", took)
	assert.Equal(t, 128+int(syscall.SIGKILL), code)
	assert.Contains(t, p.err(), fmt.Sprintf("ringrun: rank 1 (pid %d) was killed by signal SIGKILL", pids[1]))
	assert.Less(t, took, failBound)
	requireGone(t, pids)
}

func TestSIGTERMStopsEveryRank(t *testing.T) {
	t.Parallel()
	p := ringrun(t, "-np", "4", "--", ringcheckBn, "-hang")
	pids := p.pids(4, 30*time.Second)
	requireTokenHidden(t, pids)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	code := p.wait(30 * time.Second)
	assert.Equal(t, 128+int(syscall.SIGTERM), code)
	assert.Contains(t, p.err(), "ringrun: SIGTERM: stopping 4 ranks")
	requireGone(t, pids)
}

func TestRanksIgnoringSIGTERMAreKilled(t *testing.T) {
	t.Parallel()
	// A shell that ignores SIGTERM and SIGINT; --grace decides when SIGKILL comes.
	p := ringrun(t, "-np", "2", "--grace", "300ms", "--", "sh", "-c", `trap "" TERM INT; echo "rank $RINGO_RANK of $RINGO_WORLD_SIZE pid $$"; while :; do sleep 1; done`)
	pids := p.pids(2, 30*time.Second)
	start := time.Now()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGINT))
	assert.Equal(t, 128+int(syscall.SIGINT), p.wait(30*time.Second))
	assert.Less(t, time.Since(start), failBound)
	assert.Contains(t, p.err(), "ringrun: ranks 0,1 did not exit within 300ms: sending SIGKILL")
	requireGone(t, pids)
}

func TestMaxRestarts(t *testing.T) {
	t.Parallel()
	// Rank 1 fails in the first run only (RINGO_RESTART_COUNT=0).
	p := ringrun(t, "-np", "3", "--max-restarts", "1", "--", ringcheckBn, "-exit-rank", "1", "-exit-attempt", "0")
	require.Equal(t, 0, p.wait(60*time.Second), "stdout:\n%s\nstderr:\n%s", p.out(), p.err())
	assert.Contains(t, p.err(), "ringrun: restarting the job (restart 1 of 1) after: rank 1 (pid ")
	assert.Equal(t, 1, strings.Count(p.out(), "exiting with code 3"))
	for r := range 3 {
		assert.Contains(t, p.out(), fmt.Sprintf("[%d] rank %d of 3 ok\n", r, r))
	}

	// Failing every time: ringrun gives up after K restarts.
	p = ringrun(t, "-np", "2", "--max-restarts", "2", "--", ringcheckBn, "-exit-rank", "0", "-exit-code", "4")
	assert.Equal(t, 4, p.wait(60*time.Second))
	assert.Equal(t, 3, strings.Count(p.out(), "exiting with code 4"))
	assert.Contains(t, p.err(), "ringrun: giving up after 2 restarts")
}

func TestEnvironment(t *testing.T) {
	t.Parallel()
	p := startEnv(t, []string{"RINGRUN_TEST_FORWARDED=from ringrun"}, ringrunBin, "-np", "2", "-x", "A=it's 1", "-x", "RINGRUN_TEST_FORWARDED", "--timeout", "7s", "--",
		"sh", "-c", `echo "$RINGO_RANK/$RINGO_WORLD_SIZE local=$RINGO_LOCAL_RANK/$RINGO_LOCAL_WORLD_SIZE addr=$RINGO_ADDR ext=$RINGO_RENDEZVOUS_EXTERNAL job=$RINGO_JOB_ID restart=$RINGO_RESTART_COUNT timeout=$RINGO_TIMEOUT token=${#RINGO_TOKEN} A=$A F=$RINGRUN_TEST_FORWARDED"`)
	require.Equal(t, 0, p.wait(30*time.Second), p.err())
	out := p.out()
	for r := range 2 {
		assert.Regexp(t, fmt.Sprintf(`(?m)^\[%d\] %d/2 local=%d/2 addr=127\.0\.0\.1:\d+ ext=1 job=ringrun-[0-9a-f]+-0 restart=0 timeout=7s token=64 A=it's 1 F=from ringrun$`, r, r, r), out)
	}
}

func TestBadUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"-np", "2"},
		{"--hosts", "a:0", "--", "true"},
		{"-np", "5", "--hosts", "a:2,b:2", "--", "true"},
		{"-x", "1BAD=x", "--", "true"},
		{"-np", "0", "--", "true"},
		{"--transport", "carrier-pigeon", "--", "true"},
	} {
		p := ringrun(t, args...)
		assert.Equal(t, 2, p.wait(10*time.Second), "%q", args)
		assert.Contains(t, p.err(), "ringrun: ", "%q", args)
	}
	p := ringrun(t, "-np", "2", "--", "/nonexistent/program")
	assert.Equal(t, 127, p.wait(10*time.Second))
	assert.Contains(t, p.err(), "ringrun: rank 0 could not be started")
}

// Every rank fails at once (a transport no rank knows): whichever fails
// first stops the job, and ringrun still says how each of the four ended.
func TestEveryRankIsAccountedFor(t *testing.T) {
	t.Parallel()
	p := ringrun(t, "-np", "4", "-x", "RINGO_TRANSPORT=bogus", "--", ringcheckBn)
	assert.Equal(t, 1, p.wait(30*time.Second))
	m := regexp.MustCompile(`(?m)^ringrun: every rank: (.*)$`).FindStringSubmatch(p.err())
	require.NotNil(t, m, p.err())
	accounted := map[int]bool{}
	for _, group := range strings.Split(m[1], "; ") {
		gm := regexp.MustCompile(`^ranks? ([0-9,-]+) `).FindStringSubmatch(group)
		require.NotNil(t, gm, group)
		for _, part := range strings.Split(gm[1], ",") {
			lo, hi, isRange := strings.Cut(part, "-")
			a, _ := strconv.Atoi(lo)
			b := a
			if isRange {
				b, _ = strconv.Atoi(hi)
			}
			for r := a; r <= b; r++ {
				assert.False(t, accounted[r], "rank %d twice in %q", r, m[1])
				accounted[r] = true
			}
		}
	}
	assert.Len(t, accounted, 4, m[1])
	assert.Contains(t, m[1], "exited with code 1 (the first failure)")
}

// fakeSSH is an agent that behaves like ssh on one machine: it drops the
// host and hands the rest, joined by spaces, to a shell.
func fakeSSH(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "ssh")
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\nshift\nexec sh -c \"$*\"\n"), 0o755))
	return path
}

func TestAgent(t *testing.T) {
	t.Parallel()
	// The ssh path: the remote command is one quoted string, the token
	// comes on standard input and is on no command line.
	ssh := fakeSSH(t)
	p := ringrun(t, "--hosts", "node-a:2,node-b:1", "--addr", "127.0.0.1", "--agent", ssh,
		"-x", `Q=a 'quoted' "value" $HOME`, "--", "sh", "-c",
		`echo "rank $RINGO_RANK local=$RINGO_LOCAL_RANK/$RINGO_LOCAL_WORLD_SIZE Q=$Q"; exec "$0" "$@"`,
		ringcheckBn, "-sizes", "1,33")
	require.Equal(t, 0, p.wait(60*time.Second), "stdout:\n%s\nstderr:\n%s", p.out(), p.err())
	out := p.out()
	for r, local := range []string{"0/2", "1/2", "0/1"} {
		assert.Contains(t, out, fmt.Sprintf(`[%d] rank %d local=%s Q=a 'quoted' "value" $HOME`+"\n", r, r, local))
		assert.Contains(t, out, fmt.Sprintf("[%d] rank %d of 3 ok\n", r, r))
	}
	assert.Contains(t, p.err(), "started 3 ranks on 2 hosts")

	// A rank killed on the far side is reported with its signal.
	p = ringrun(t, "--hosts", "node-a:2", "--addr", "127.0.0.1", "--agent", ssh, "--", ringcheckBn, "-hang")
	pids := p.pids(2, 30*time.Second)
	requireTokenHidden(t, pids)
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	assert.Equal(t, 128+int(syscall.SIGKILL), p.wait(30*time.Second))
	assert.Contains(t, p.err(), "ringrun: rank 0 on node-a (pid ")
	assert.Contains(t, p.err(), "was killed by signal SIGKILL")
	requireGone(t, pids)
}

func TestAgentStopsRanksWhenRingrunDies(t *testing.T) {
	t.Parallel()
	// ringrun killed outright cannot stop anything: the remote wrapper sees
	// its standard input close and stops the program (as over ssh).
	p := ringrun(t, "--hosts", "node-a:2,node-b:2", "--addr", "127.0.0.1", "--agent", fakeSSH(t), "--", ringcheckBn, "-hang")
	pids := p.pids(4, 30*time.Second)
	require.NoError(t, p.cmd.Process.Kill())
	p.wait(10 * time.Second)
	requireAllExit(t, pids, failBound)

	// Local ranks die with ringrun too (the kernel's parent-death signal).
	p = ringrun(t, "-np", "2", "--", ringcheckBn, "-hang")
	pids = p.pids(2, 30*time.Second)
	require.NoError(t, p.cmd.Process.Kill())
	p.wait(10 * time.Second)
	requireAllExit(t, pids, failBound)
}

func TestLeftoversAreStopped(t *testing.T) {
	t.Parallel()
	// Each rank leaves a child behind, holding its stdout, and exits 0:
	// ringrun stops the children, so it neither waits for them nor leaves
	// them running.
	p := ringrun(t, "-np", "2", "--", "sh", "-c", `sleep 60 & echo "rank $RINGO_RANK of $RINGO_WORLD_SIZE pid $!"`)
	pids := p.pids(2, 30*time.Second)
	start := time.Now()
	assert.Equal(t, 0, p.wait(30*time.Second), p.err())
	assert.Less(t, time.Since(start), drainTimeout, "ringrun waited for the leftovers' output")
	requireGone(t, pids)
}

var startedLine = regexp.MustCompile(`^err: ringrun: started \d+ ranks \(job ringrun-[0-9a-f]+-\d+, rendezvous (127\.0\.0\.1:\d+)\)$`)

func TestRingrunServesTheRendezvous(t *testing.T) {
	t.Parallel()
	// The ranks wait, before joining, until the test has played a stranger
	// at ringrun's rendezvous: each reads a line from its own FIFO.
	dir := t.TempDir()
	for r := range 2 {
		require.NoError(t, syscall.Mkfifo(filepath.Join(dir, fmt.Sprint("go.", r)), 0o600))
	}
	p := ringrun(t, "-np", "2", "--", "sh", "-c", `read x < "$0/go.$RINGO_RANK" && exec "$1" -sizes 1,33`, dir, ringcheckBn)
	var addr string
	for addr == "" {
		select {
		case l := <-p.lines:
			if m := startedLine.FindStringSubmatch(l); m != nil {
				addr = m[1]
			}
		case <-time.After(30 * time.Second):
			require.FailNow(t, "no start line", p.err())
		}
	}

	// ringrun, not rank 0, listens there: nothing has joined yet. It hangs
	// up on a stranger at once.
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte(strings.Repeat("GET / HTTP/1.1\r\n", 16)))
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
	n, err := io.Copy(io.Discard, conn)
	if err != nil {
		require.ErrorIs(t, err, syscall.ECONNRESET)
	}
	assert.Zero(t, n)

	// The ranks go on, join and succeed.
	for r := range 2 {
		opened := make(chan error, 1)
		go func() { // opening a FIFO waits for its reader, the rank
			f, err := os.OpenFile(filepath.Join(dir, fmt.Sprint("go.", r)), os.O_WRONLY, 0)
			if err == nil {
				_, err = f.WriteString("go\n")
				err = errors.Join(err, f.Close())
			}
			opened <- err
		}()
		select {
		case err := <-opened:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			require.FailNow(t, "rank did not read its FIFO", "rank %d\nstderr:\n%s", r, p.err())
		}
	}
	require.Equal(t, 0, p.wait(60*time.Second), "stdout:\n%s\nstderr:\n%s", p.out(), p.err())
	for r := range 2 {
		assert.Contains(t, p.out(), fmt.Sprintf("[%d] rank %d of 2 ok\n", r, r))
	}
	assert.Regexp(t, `(?m)^ringrun: ringo rendezvous: refused a connection from=127\.0\.0\.1:\d+ err=".*not a ringo handshake`, p.err())
}
