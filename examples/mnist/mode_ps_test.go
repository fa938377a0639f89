package main

import (
	"io"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestPSAsyncConverges: 3 workers pushing asynchronously to 2 servers
// (5 ranks) learn MNIST: after one epoch of 12000 samples the loss (the
// mean of the last three logged) has fallen by more than half and the test accuracy is above 85% (ddp and
// sync reach 91% here; async, whose pushes are each a step of their own,
// 90% without momentum).
func TestPSAsyncConverges(t *testing.T) {
	defer goleak.VerifyNone(t)
	out := runInProcess(t, 5, "-mode", "ps", "-servers", "2", "-consistency", "async", "-momentum", "0",
		"-train-samples", "12000", "-epochs", "1", "-hidden", "64", "-log-every", "20")
	losses, acc, _ := parseOutput(t, out)
	require.Len(t, acc, 1)
	t.Logf("losses every 20 steps: %.3f; test accuracy %.4f", losses, acc[0])
	require.GreaterOrEqual(t, len(losses), 4)
	last := losses[len(losses)-3:] // one batch's loss is noisy: the mean of the last three
	require.Less(t, (last[0]+last[1]+last[2])/3, losses[0]*0.5)
	require.Greater(t, acc[0], 0.85)
}

// TestPSSyncLossCurveEqualsDDP: under Sync, 3 workers and 1 server print
// the loss curve of ddp on 3 ranks (the same steps, up to the order in
// which the gradients are summed).
func TestPSSyncLossCurveEqualsDDP(t *testing.T) {
	defer goleak.VerifyNone(t)
	args := []string{"-batch", "64", "-steps", "50", "-log-every", "1", "-seed", "7", "-hidden", "64"}
	ddp, _, _ := parseOutput(t, runInProcess(t, 3, append(args, "-mode", "ddp")...))
	sync, _, _ := parseOutput(t, runInProcess(t, 4, append(args, "-mode", "ps", "-servers", "1", "-consistency", "sync")...))
	require.Len(t, ddp, 50)
	require.Len(t, sync, 50)
	for k := range ddp {
		require.InEpsilon(t, ddp[k], sync[k], 1e-4, "step %d", k+1)
	}
	require.Less(t, sync[49], sync[0]*0.5, "it learns")
}

func TestPSOptions(t *testing.T) {
	for _, bad := range [][]string{
		{"-mode", "ps", "-servers", "0"}, {"-mode", "ps", "-np", "2", "-servers", "2"},
		{"-mode", "ps", "-checkpoint", "x"},
	} {
		_, err := parseOptions(bad, io.Discard)
		require.Error(t, err, "%v", bad)
	}
	for _, bad := range []string{"ssp", "ssp:-1", "bsp"} {
		_, err := parseConsistency(bad)
		require.Error(t, err, bad)
	}
}
