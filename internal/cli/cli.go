// Package cli is what ringo's commands (under cmd, bench and examples)
// share around their work: a context that Ctrl-C cancels, and one
// convention of exit codes and error lines.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Main runs a command and exits with the code run returns. run gets the
// command line's arguments, the standard streams, and a context that
// SIGINT and SIGTERM cancel.
func Main(run func(ctx context.Context, args []string, stdout, stderr io.Writer) int) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	OK       = 0 // done, or -help asked for
	Failed   = 1 // the work failed
	BadUsage = 2 // the command line is wrong
)

// Run does a command's work once its command line is parsed, and returns
// its exit code: OK if parsing stopped at -help (flag.ErrHelp); BadUsage,
// saying "name: error" on stderr, for any other parse error; else run's
// outcome: OK, or Failed with "name: error" on stderr.
func Run(name string, stderr io.Writer, parse error, run func() error) int {
	if errors.Is(parse, flag.ErrHelp) {
		return OK
	}
	if parse != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, parse)
		return BadUsage
	}
	if err := run(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return Failed
	}
	return OK
}
