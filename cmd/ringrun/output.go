//go:build unix

package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"

	"golang.org/x/term"
)

// maxLine bounds how much of one line is held before it is written out; a
// longer line is written in pieces of this size, each prefixed.
const maxLine = 1 << 20

// output merges the ranks' lines onto ringrun's stdout and stderr. Every
// line is written whole, by one Write, under one lock: lines of different
// ranks and streams never mix. On a terminal, a status line is kept at the
// bottom of stderr, erased before each line and drawn again after it.
type output struct {
	mu     sync.Mutex
	stdout io.Writer
	stderr io.Writer
	status string // "" when there is none (not a terminal)
	tty    bool
	buf    []byte
}

func newOutput(stdout, stderr io.Writer, tty bool) *output {
	return &output{stdout: stdout, stderr: stderr, tty: tty}
}

// isTerminal tells whether f is a terminal (not merely a character device such as /dev/null).
func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

const eraseLine = "\r\x1b[K"

// line writes prefix+text+"\n" to w (o.stdout or o.stderr); text has no
// newline.
func (o *output) line(w io.Writer, prefix string, text []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.status != "" {
		_, _ = io.WriteString(o.stderr, eraseLine)
	}
	o.buf = append(append(append(o.buf[:0], prefix...), text...), '\n')
	_, _ = w.Write(o.buf)
	if o.status != "" {
		_, _ = io.WriteString(o.stderr, o.status)
	}
}

// info writes one of ringrun's own lines to stderr.
func (o *output) info(format string, a ...any) {
	o.line(o.stderr, "ringrun: ", []byte(fmt.Sprintf(format, a...)))
}

// setStatus replaces the status line (on a terminal only); "" erases it.
func (o *output) setStatus(s string) {
	if !o.tty {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if s == o.status {
		return
	}
	_, _ = io.WriteString(o.stderr, eraseLine+s)
	o.status = s
}

// copyLines reads r to its end and writes every line through o to w with
// prefix, and the bytes as they are to file (if not nil). A last line
// without a newline is written with one.
func (o *output) copyLines(r io.Reader, w io.Writer, prefix string, file io.Writer) {
	br := bufio.NewReaderSize(r, 64<<10)
	var long []byte // a line longer than br's buffer, so far
	for {
		chunk, err := br.ReadSlice('\n')
		if file != nil && len(chunk) > 0 {
			_, _ = file.Write(chunk)
		}
		switch {
		case err == nil:
			text := chunk[:len(chunk)-1]
			if len(long) > 0 {
				text = append(long, text...)
				long = long[:0]
			}
			o.line(w, prefix, text)
		case errors.Is(err, bufio.ErrBufferFull):
			long = append(long, chunk...)
			if len(long) >= maxLine {
				o.line(w, prefix, long)
				long = long[:0]
			}
		default:
			if text := append(long, chunk...); len(text) > 0 {
				o.line(w, prefix, text)
			}
			return
		}
	}
}

func rankPrefix(rank int) string { return "[" + strconv.Itoa(rank) + "] " }
