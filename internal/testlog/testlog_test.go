package testlog

import (
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Writers on many goroutines while two waiters wait for a line that comes
// last: both return, and nothing written is lost.
func TestWaitForSeesTheLineWhileOthersWrite(t *testing.T) {
	var b Buffer
	var waiters sync.WaitGroup
	for range 2 {
		waiters.Go(func() { b.WaitFor(t, "the end", 10*time.Second) })
	}
	var writers sync.WaitGroup
	for w := range 4 {
		writers.Go(func() {
			for i := range 100 {
				_, _ = b.Write([]byte(strings.Repeat("x", w+i%3) + "\n"))
			}
		})
	}
	writers.Wait()
	_, _ = b.Write([]byte("the end\n"))
	waiters.Wait()
	assert.Equal(t, 401, strings.Count(b.String(), "\n"))
}

func TestWaitForFailsWhenNothingComes(t *testing.T) {
	var b Buffer
	ft := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.WaitFor(ft, "never", time.Millisecond)
	}()
	<-done
	assert.Contains(t, ft.msg, `want "never"`)
}

// fatalRecorder records a Fatalf and ends the goroutine as testing would.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = strings.TrimSpace(fmt.Sprintf(format, args...))
	runtime.Goexit()
}

func TestLoggers(t *testing.T) {
	var text, lines Buffer
	text.Logger(slog.LevelInfo).Debug("hidden")
	text.Logger(slog.LevelInfo).Warn("shown", "k", 1)
	assert.NotContains(t, text.String(), "hidden")
	assert.Contains(t, text.String(), `level=WARN msg=shown k=1`)

	log := lines.Lines().With("rank", 2)
	log.Debug("ringo: at the abort", "op", 7)
	log.Warn("ringo: communicator aborted")
	require.Equal(t, "DEBUG ringo: at the abort rank=2 op=7\nWARN ringo: communicator aborted rank=2\n", lines.String())
}
