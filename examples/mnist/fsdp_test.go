package main

import (
	"math"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestFSDPLossCurveEqualsDDP: -mode fsdp under every strategy prints the
// loss -mode ddp prints with the same flags, to 1e-4 relative, for each
// of 50 steps, and ends with the same test accuracy; on 4 ranks, and on 3
// (where the layers' sizes do not divide).
func TestFSDPLossCurveEqualsDDP(t *testing.T) {
	defer goleak.VerifyNone(t)
	args := []string{"-batch", "64", "-steps", "50", "-train-samples", "3200", "-log-every", "1", "-seed", "7", "-optimizer", "adam", "-lr", "0.002"}
	for _, n := range []int{4, 3} {
		ddp, ddpAcc, _ := parseOutput(t, runInProcess(t, n, with(args, "-mode", "ddp")...))
		require.Len(t, ddp, 50)
		require.Less(t, ddp[49], ddp[0]*0.5, "it learns")
		require.Len(t, ddpAcc, 1)
		for _, strategy := range [][]string{
			{"-strategy", "full"}, {"-strategy", "full", "-prefetch", "0"}, {"-strategy", "grad"},
			{"-strategy", "optim"}, {"-strategy", "none"}, {"-strategy", "hybrid", "-group-size", "2"},
		} {
			if n%2 != 0 && strategy[1] == "hybrid" {
				strategy[3] = "3"
			}
			got, acc, _ := parseOutput(t, runInProcess(t, n, with(with(args, "-mode", "fsdp"), strategy...)...))
			require.Len(t, got, 50, "%v", strategy)
			worst := 0.0
			for k := range ddp {
				worst = max(worst, math.Abs(got[k]-ddp[k])/ddp[k])
			}
			t.Logf("%d ranks %v: largest relative loss difference %.2g, accuracy %v (ddp %v)", n, strategy, worst, acc, ddpAcc)
			for k := range ddp {
				require.InEpsilon(t, ddp[k], got[k], 1e-4, "%d ranks %v, step %d: ddp %v, fsdp %v", n, strategy, k+1, ddp[k], got[k])
			}
			require.Equal(t, ddpAcc, acc, "%d ranks %v: the final accuracy", n, strategy)
		}
	}
}

// with is base and then extra, in a new slice.
func with(base []string, extra ...string) []string { return slices.Concat(base, extra) }

// TestFSDPResumesBitwise: -mode fsdp trained 3 epochs in one go, or 1
// epoch, stopped, and resumed (from a full checkpoint, from a sharded one,
// on another number of ranks and strategy, and from -mode ddp's
// checkpoint) ends with the same loss curve and parameters... the same
// parameters when the run that saved and the run that resumed compute
// alike (the same number of ranks), and the same loss to 1e-4 otherwise.
func TestFSDPResumesBitwise(t *testing.T) {
	args := []string{"-train-samples", "1000", "-batch", "96", "-hidden", "64", "-log-every", "5", "-optimizer", "adam", "-lr", "0.001"}
	fsdp := with(args, "-mode", "fsdp")
	whole := runInProcess(t, 3, with(fsdp, "-epochs", "3")...)
	wholeLoss, wholeAcc, wholeHash := parseOutput(t, whole)
	for _, tc := range []struct {
		name          string
		first, resume []string
		ranks         [2]int
	}{
		{"full checkpoint", fsdp, fsdp, [2]int{3, 3}},
		{"sharded checkpoint", with(fsdp, "-sharded-checkpoint"), with(fsdp, "-sharded-checkpoint"), [2]int{3, 3}},
		{"sharded at 2 ranks, resumed at 3", with(fsdp, "-sharded-checkpoint", "-strategy", "grad"), with(fsdp, "-sharded-checkpoint"), [2]int{2, 3}},
		{"ddp's checkpoint", with(args, "-mode", "ddp"), fsdp, [2]int{3, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			firstLoss, firstAcc, _ := parseOutput(t, runInProcess(t, tc.ranks[0], with(tc.first, "-epochs", "1", "-checkpoint", dir)...))
			resumedLoss, resumedAcc, resumedHash := parseOutput(t, runInProcess(t, tc.ranks[1], with(tc.resume, "-epochs", "3", "-checkpoint", dir)...))
			loss := append(firstLoss, resumedLoss...)
			require.Len(t, loss, len(wholeLoss))
			if tc.ranks[0] == tc.ranks[1] && tc.first[len(tc.first)-1] != "ddp" {
				require.Equal(t, wholeHash, resumedHash)
				require.Equal(t, wholeLoss, loss)
				require.Equal(t, wholeAcc, append(firstAcc, resumedAcc...))
				return
			}
			for k := range loss {
				require.InEpsilon(t, wholeLoss[k], loss[k], 1e-4, "step %d", 5*(k+1))
			}
		})
	}
}
