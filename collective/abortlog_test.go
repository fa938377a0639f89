package collective_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testlog"
)

// An abort is one WARN line with its cause; the status (the call, each
// peer, the recent calls) follows at debug level, one line each, and only
// when debug logs are on.
func TestAbortLogIsOneLinePlusStatusAtDebug(t *testing.T) {
	log := new(testlog.Buffer)
	comms := local(t, 2, collective.Config{Logger: log.Lines()})
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		return collective.AllReduce(ctx, c, make([]float32, 3), collective.Sum)
	}))
	errs := each(comms, func(r int, c *collective.Comm) error {
		if r == 0 {
			return collective.AllReduce(ctx, c, make([]float32, 3), collective.Sum)
		}
		return collective.AllGather(ctx, c, make([]float32, 1), make([]float32, 2))
	})
	for r, err := range errs {
		require.ErrorIs(t, err, collective.ErrMismatch, "rank %d", r)
	}
	log.WaitFor(t, "ringo: at the abort: call #2", testTimeout)
	var warns []string
	for _, line := range strings.Split(log.String(), "\n") {
		if strings.HasPrefix(line, "WARN ringo: communicator aborted") {
			warns = append(warns, line)
			assert.Contains(t, line, "err=")
			assert.Contains(t, line, "mismatched operation")
			assert.NotContains(t, line, "status", "the status has lines of its own")
		}
	}
	assert.Len(t, warns, 2, "one line per rank:\n%s", log.String())
	out := log.String()
	assert.Contains(t, out, "DEBUG ringo: at the abort: rank 0 of 2, 2 calls")
	assert.Contains(t, out, "DEBUG ringo: at the abort: peer rank 1: last op #")
	assert.Contains(t, out, "DEBUG ringo: at the abort: call #1 AllReduce(float32, count=3, Sum")
	assert.Contains(t, out, "DEBUG ringo: at the abort: call #2 AllReduce(float32, count=3, Sum")

	// Without debug logs, the abort is the one line.
	var buf testlog.Buffer
	quiet := local(t, 2, collective.Config{Logger: buf.Logger(slog.LevelInfo)})
	quiet[0].Abort(nil) // rank 1 hears of it
	for _, c := range quiet {
		require.ErrorIs(t, collective.Barrier(ctx, c), collective.ErrAborted)
	}
	assert.Contains(t, buf.String(), "communicator aborted")
	assert.NotContains(t, buf.String(), "at the abort")
}
