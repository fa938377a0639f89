//go:build unix

package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/testlog"
)

func TestLinesNeverInterleave(t *testing.T) {
	var stdout, stderr testlog.Buffer
	o := newOutput(&stdout, &stderr, false)
	// 8 writers, each writing lines in small pieces through a pipe, so
	// that reads end mid-line all the time.
	const writers, lines = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		pr, pw := io.Pipe()
		wg.Add(2)
		go func() {
			defer wg.Done()
			dst := io.Writer(&stdout)
			if w%2 == 1 {
				dst = &stderr
			}
			o.copyLines(pr, dst, rankPrefix(w), nil)
		}()
		go func() {
			defer wg.Done()
			defer pw.Close()
			for i := range lines {
				line := fmt.Sprintf("writer %d line %d %s\n", w, i, strings.Repeat("x", i%50))
				for len(line) > 0 {
					n := min(len(line), 1+i%7)
					_, _ = pw.Write([]byte(line[:n]))
					line = line[n:]
				}
			}
			_, _ = pw.Write([]byte("no newline at the end"))
		}()
	}
	wg.Wait()
	re := regexp.MustCompile(`^\[(\d)\] (writer (\d) line \d+ x*|no newline at the end)$`)
	count := map[string]int{}
	for _, s := range []string{stdout.String(), stderr.String()} {
		require.True(t, strings.HasSuffix(s, "\n"))
		for _, l := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
			m := re.FindStringSubmatch(l)
			require.NotNil(t, m, "mixed line %q", l)
			if m[3] != "" {
				require.Equal(t, m[1], m[3], "line of writer %s prefixed as %s", m[3], m[1])
			}
			count[m[1]]++
		}
	}
	for w := range writers {
		assert.Equal(t, lines+1, count[fmt.Sprint(w)], "writer %d", w)
	}
}

func TestLongLinesAndFiles(t *testing.T) {
	var out, file bytes.Buffer
	o := newOutput(&out, io.Discard, false)
	long := strings.Repeat("y", maxLine+10)
	in := "short\n" + long + "\n\nlast"
	o.copyLines(strings.NewReader(in), &out, "[7] ", &file)
	assert.Equal(t, in, file.String(), "the file gets the bytes as they came")
	got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	require.Len(t, got, 5)
	assert.Equal(t, "[7] short", got[0])
	assert.Equal(t, "[7] "+long[:maxLine], got[1], "a line past maxLine is cut into prefixed pieces")
	assert.Equal(t, "[7] "+long[maxLine:], got[2])
	assert.Equal(t, "[7] ", got[3])
	assert.Equal(t, "[7] last", got[4])
}

func TestStatusLine(t *testing.T) {
	var stdout, stderr bytes.Buffer
	o := newOutput(&stdout, &stderr, true)
	o.setStatus("ringrun: 2/2 ranks running")
	o.line(&stdout, "[0] ", []byte("hello"))
	o.info("note")
	o.setStatus("")
	assert.Equal(t, "[0] hello\n", stdout.String())
	assert.Equal(t, eraseLine+"ringrun: 2/2 ranks running"+ // drawn
		eraseLine+"ringrun: 2/2 ranks running"+ // erased before the stdout line, drawn after it
		eraseLine+"ringrun: note\n"+"ringrun: 2/2 ranks running"+
		eraseLine, // erased at the end
		stderr.String())

	// Not a terminal: no status, no escapes.
	stderr.Reset()
	o = newOutput(&stdout, &stderr, false)
	o.setStatus("ringrun: 2/2 ranks running")
	o.info("note")
	assert.Equal(t, "ringrun: note\n", stderr.String())
}

func TestInfoWriter(t *testing.T) {
	var stderr bytes.Buffer
	w := infoWriter{newOutput(io.Discard, &stderr, false)}
	for _, in := range []string{
		`msg="ringo rendezvous: refused a connection" from=127.0.0.1:5 err="protocol error: \"GET\""` + "\n",
		"msg=plain k=v\n",
		"msg=\"\"\n",
		"other=1\n",
	} {
		n, err := w.Write([]byte(in))
		require.NoError(t, err)
		assert.Equal(t, len(in), n)
	}
	assert.Equal(t, `ringrun: ringo rendezvous: refused a connection from=127.0.0.1:5 err="protocol error: \"GET\""`+"\n"+
		"ringrun: plain k=v\nringrun: \nringrun: other=1\n", stderr.String())
}

// TestRunInProcess runs ringrun's run() in the test process (so that the
// race detector sees the launcher's own goroutines), with a terminal's
// status line, --output-dir and a restart.
func TestRunInProcess(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var stdout, stderr testlog.Buffer
	sigs := make(chan os.Signal)
	code := run([]string{"-np", "3", "--output-dir", dir, "--max-restarts", "1", "--", ringcheckBn,
		"-exit-rank", "2", "-exit-attempt", "0", "-sizes", "1,100"}, &stdout, &stderr, true, sigs)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	assert.Contains(t, stderr.String(), "ranks running")
	assert.Contains(t, stderr.String(), eraseLine)
	// The status counts the ranks joining ringrun's rendezvous, then the
	// ranks running.
	assert.Contains(t, stderr.String(), "ringrun: 0/3 ranks joined · 3/3 running · ")
	assert.Regexp(t, `ringrun: 3/3 ranks running · \d+:\d\d · restart 1/1`, stderr.String())
	assert.Contains(t, stderr.String(), "ringrun: restarting the job (restart 1 of 1)")
	b, err := os.ReadFile(filepath.Join(dir, "rank.2.stdout"))
	require.NoError(t, err)
	assert.Regexp(t, `^rank 2 of 3 pid \d+\nrank 2 of 3 exiting with code 3 at \d+\n--- ringrun: restart 1 ---\nrank 2 of 3 pid \d+\nrank 2 of 3 ok\n$`, string(b))

	// A signal stops the job.
	stdout, stderr = testlog.Buffer{}, testlog.Buffer{}
	done := make(chan int)
	go func() {
		done <- run([]string{"-np", "2", "--", ringcheckBn, "-hang"}, &stdout, &stderr, false, sigs)
	}()
	re := regexp.MustCompile(`pid \d+`)
	require.Eventually(t, func() bool { return len(re.FindAllString(stdout.String(), -1)) == 2 }, 30*time.Second, 10*time.Millisecond)
	sigs <- syscall.SIGTERM
	select {
	case code := <-done:
		assert.Equal(t, 128+int(syscall.SIGTERM), code)
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after SIGTERM")
	}
	assert.Contains(t, stderr.String(), "ringrun: SIGTERM: stopping 2 ranks")
}

func TestAccountOfRanks(t *testing.T) {
	ps := place(6, nil)
	procs := []*rankProc{
		{p: ps[0], fate: fate{how: "was killed by signal SIGTERM", stopped: true}},
		{p: ps[1], fate: fate{how: "exited with code 3", first: true}},
		{p: ps[2], fate: fate{how: "was killed by signal SIGTERM", stopped: true}},
		{p: ps[3], fate: fate{how: "exited with code 1"}},
		{p: ps[4], fate: fate{how: "was killed by signal SIGTERM", stopped: true}},
	}
	assert.Equal(t, "every rank: ranks 0,2,4 were killed by signal SIGTERM (ringrun stopped them); rank 1 exited with code 3 (the first failure); "+
		"rank 3 exited with code 1; rank 5 was never started", accountOfRanks(ps, procs))
}
