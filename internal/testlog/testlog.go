// Package testlog gives tests a place for loggers and processes to write
// to while the test reads it: a Buffer safe for concurrent writers, that a
// test can wait on until a text arrives, and slog loggers that write into
// it. Only tests use it (internal/archtest keeps it so).
package testlog

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// Buffer collects what is written to it; any number of goroutines (a
// logger's, a process's output copiers) may write while the test reads.
// The zero Buffer is empty and ready to use.
type Buffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed by the next write, for WaitFor; nil while nobody waits
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
	return b.b.Write(p)
}

// String is everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// WaitFor waits until the buffer holds text, and fails the test if it does
// not within wait.
func (b *Buffer) WaitFor(t testing.TB, text string, wait time.Duration) {
	t.Helper()
	timeout := time.After(wait)
	for {
		b.mu.Lock()
		if strings.Contains(b.b.String(), text) {
			b.mu.Unlock()
			return
		}
		if b.changed == nil {
			b.changed = make(chan struct{})
		}
		changed := b.changed
		b.mu.Unlock()
		select {
		case <-changed:
		case <-timeout:
			t.Fatalf("not logged within %v: want %q in\n%s", wait, text, b.String())
		}
	}
}

// Logger is a logger writing slog's text format into b, records of level
// and above.
func (b *Buffer) Logger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: level}))
}

// Lines is a logger writing every record, of any level, into b as one
// plain line: "LEVEL message key=value ...", without the time, which tests
// can match whole.
func (b *Buffer) Lines() *slog.Logger { return slog.New(lineHandler{b: b}) }

type lineHandler struct {
	b     *Buffer
	attrs []slog.Attr
}

func (h lineHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h lineHandler) Handle(_ context.Context, r slog.Record) error {
	var line strings.Builder
	line.WriteString(r.Level.String() + " " + r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&line, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&line, " %s=%v", a.Key, a.Value)
		return true
	})
	line.WriteByte('\n')
	_, err := h.b.Write([]byte(line.String()))
	return err
}

func (h lineHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return lineHandler{b: h.b, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h lineHandler) WithGroup(string) slog.Handler { return h }
