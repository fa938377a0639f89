package main

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// Both ways learn (the held-out loss falls well below its start, towards
// the best possible), compute the same training (the same loss curve up to
// summation order), and the sharded tables hold 1/N of the memory and move
// fewer bytes per step than replicated ones, whose every rank receives
// every other rank's gradient rows.
func TestShardedAndReplicatedTrainAlikeAndShardedMovesLess(t *testing.T) {
	defer goleak.VerifyNone(t)
	o, err := parseOptions([]string{"-np", "3", "-steps", "200", "-log-every", "20", "-eval", "4096"}, io.Discard)
	require.NoError(t, err)
	var out bytes.Buffer
	results, err := runLocal(context.Background(), &o, &out)
	require.NoError(t, err)
	t.Log(out.String())
	require.Len(t, results, 2)
	sh, rep := results[0], results[1]
	for _, r := range results {
		assert.Less(t, r.after, r.before-0.04, "%s learns", r.mode)
		assert.Less(t, r.best, r.after, "%s: no model beats the generator's own probabilities", r.mode)
	}
	require.Len(t, sh.losses, 10)
	assert.InDeltaSlice(t, sh.losses, rep.losses, 1e-4)
	assert.InDelta(t, sh.after, rep.after, 1e-4)
	assert.Less(t, sh.bytesPerStep, rep.bytesPerStep)
	assert.InDelta(t, 1.0/3, float64(sh.memory)/float64(rep.memory), 0.01)
	assert.Contains(t, out.String(), "sharded tables move")
}

func TestOptions(t *testing.T) {
	for _, bad := range [][]string{{"-np", "0"}, {"-mode", "ps"}, {"-items", "1"}, {"-lr", "0"}, {"x"}} {
		_, err := parseOptions(bad, io.Discard)
		require.Error(t, err, "%v", bad)
	}
	require.Equal(t, 2, run(context.Background(), []string{"-dim", "0"}, io.Discard, io.Discard))
}
