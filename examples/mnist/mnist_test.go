package main

import (
	"bytes"
	"context"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/mnist"
	"github.com/ringo-ml/ringo/internal/testjob"
)

// loadMNIST loads the data once for every test of the package.
var loadMNIST = sync.OnceValues(func() ([2]*mnist.Set, error) {
	train, test, err := mnist.Load("")
	return [2]*mnist.Set{train, test}, err
})

// runInProcess runs the command's training with args, in this process: in
// -mode single, or with ranks of collective.Local(ranks). It returns rank
// 0's result lines.
func runInProcess(t *testing.T, ranks int, args ...string) string {
	t.Helper()
	sets, err := loadMNIST()
	require.NoError(t, err)
	o, err := parseOptions(args, io.Discard)
	require.NoError(t, err)
	ctx := context.Background()
	if o.mode == "single" {
		var out bytes.Buffer
		require.NoError(t, runJob(ctx, &job{opts: o, train: sets[0], test: sets[1], out: &out, log: io.Discard}))
		return out.String()
	}
	comms, err := collective.Local(ranks)
	require.NoError(t, err)
	defer testjob.CloseAll(comms)
	outs := make([]bytes.Buffer, ranks)
	testjob.RequireAllOK(t, testjob.Each(ranks, func(r int) error {
		return runJob(ctx, &job{opts: o, comm: comms[r], train: sets[0], test: sets[1], out: &outs[r], log: io.Discard})
	}))
	return outs[0].String()
}

var (
	stepLine = regexp.MustCompile(`^step=(\d+) loss=(\S+)$`)
	hashLine = regexp.MustCompile(`^params_sha256=([0-9a-f]{64})$`)
	accLine  = regexp.MustCompile(`^epoch=(\d+) test_accuracy=(0\.\d{4}|1\.0000)$`)
)

// parseOutput checks that every line has one of the three forms and returns
// the losses by step, the accuracies by epoch and the hash.
func parseOutput(t *testing.T, out string) (losses []float64, accuracies []float64, hash string) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if m := stepLine.FindStringSubmatch(line); m != nil {
			loss, err := strconv.ParseFloat(m[2], 64)
			require.NoError(t, err)
			losses = append(losses, loss)
		} else if m := accLine.FindStringSubmatch(line); m != nil {
			acc, err := strconv.ParseFloat(m[2], 64)
			require.NoError(t, err)
			accuracies = append(accuracies, acc)
		} else if m := hashLine.FindStringSubmatch(line); m != nil {
			require.Empty(t, hash, "one hash line")
			hash = m[1]
		} else {
			t.Fatalf("unexpected output line %q", line)
		}
	}
	require.NotEmpty(t, hash, "the output ends with the hash")
	return losses, accuracies, hash
}

// TestDDPLossCurveEqualsSingle: -mode single and -mode ddp on 4 ranks (and on
// 3, where 64 samples split 21/21/22) print the same loss for each of 50
// steps, up to float summation order.
func TestDDPLossCurveEqualsSingle(t *testing.T) {
	defer goleak.VerifyNone(t)
	args := []string{"-batch", "64", "-steps", "50", "-log-every", "1", "-seed", "7"}
	single, _, singleHash := parseOutput(t, runInProcess(t, 1, append(args, "-mode", "single")...))
	require.Len(t, single, 50)
	require.Less(t, single[49], single[0]*0.5, "it learns")
	for _, n := range []int{4, 3} {
		ddp, _, ddpHash := parseOutput(t, runInProcess(t, n, append(args, "-mode", "ddp")...))
		require.Len(t, ddp, 50)
		for k := range single {
			require.InEpsilon(t, single[k], ddp[k], 1e-4, "%d ranks, step %d: single %v, ddp %v", n, k+1, single[k], ddp[k])
		}
		require.NotEqual(t, singleHash, ddpHash, "summation order does differ: the comparison is not vacuous")
	}
}

// TestSameFlagsSameResult: a run is a function of its flags.
func TestSameFlagsSameResult(t *testing.T) {
	args := []string{"-mode", "ddp", "-batch", "50", "-steps", "30", "-hidden", "32", "-log-every", "10"}
	a := runInProcess(t, 2, args...)
	b := runInProcess(t, 2, args...)
	require.Equal(t, a, b)
	_, _, ha := parseOutput(t, a)
	_, _, hc := parseOutput(t, runInProcess(t, 2, append(args, "-seed", "2")...))
	require.NotEqual(t, ha, hc)
}

// TestResumeFromCheckpointIsBitwise: training 3 epochs in one go, or 1
// epoch, stopping, and resuming for 2 more from the checkpoint, ends with
// the same parameters, in both modes; a checkpoint of other flags is
// refused.
func TestResumeFromCheckpointIsBitwise(t *testing.T) {
	for _, tc := range []struct {
		mode  string
		ranks int
	}{{"single", 1}, {"ddp", 3}} {
		t.Run(tc.mode, func(t *testing.T) {
			// 1000 samples in batches of 96: the last batch of each epoch has 40.
			args := []string{"-mode", tc.mode, "-train-samples", "1000", "-batch", "96", "-hidden", "64", "-log-every", "5", "-optimizer", "adam", "-lr", "0.001"}
			whole := runInProcess(t, tc.ranks, append(args, "-epochs", "3")...)
			dir := t.TempDir()
			first := runInProcess(t, tc.ranks, append(args, "-epochs", "1", "-checkpoint", dir)...)
			resumed := runInProcess(t, tc.ranks, append(args, "-epochs", "3", "-checkpoint", dir)...)

			wholeLoss, wholeAcc, wholeHash := parseOutput(t, whole)
			firstLoss, firstAcc, _ := parseOutput(t, first)
			resumedLoss, resumedAcc, resumedHash := parseOutput(t, resumed)
			require.Equal(t, wholeHash, resumedHash)
			require.Equal(t, wholeLoss, append(firstLoss, resumedLoss...))
			require.Equal(t, wholeAcc, append(firstAcc, resumedAcc...))
			require.Len(t, wholeAcc, 3)

			// The checkpoint is now of epoch 3; a run with another batch size
			// must not resume from it.
			sets, err := loadMNIST()
			require.NoError(t, err)
			o, err := parseOptions(append(args, "-epochs", "4", "-checkpoint", dir, "-batch", "100", "-mode", "single"), io.Discard)
			require.NoError(t, err)
			err = runJob(context.Background(), &job{opts: o, train: sets[0], test: sets[1], out: io.Discard, log: io.Discard})
			require.ErrorContains(t, err, `batch "96", this one has "100"`)
		})
	}
}

func TestSampleOrderAndShares(t *testing.T) {
	a, b := sampleOrder(1, 0, 1000), sampleOrder(1, 0, 1000)
	require.Equal(t, a, b)
	require.NotEqual(t, a, sampleOrder(1, 1, 1000), "each epoch has its own order")
	require.NotEqual(t, a, sampleOrder(2, 0, 1000))
	sorted := slices.Clone(a)
	slices.Sort(sorted)
	for i, v := range sorted {
		require.Equal(t, i, v, "a permutation")
	}
	require.Equal(t, 11, stepsPerEpoch(1000, 96))
	require.Len(t, globalBatch(a, 10, 96), 40)
	for _, n := range []int{1, 2, 3, 4, 7, 50} {
		for _, b := range []int{0, 1, 5, 64} {
			global := a[:b]
			joined := []int{}
			sizes := map[int]bool{}
			for r := range n {
				s := share(global, r, n)
				joined = append(joined, s...)
				sizes[len(s)] = true
			}
			require.Equal(t, global, joined, "n=%d b=%d: the shares are the batch, in order", n, b)
			require.LessOrEqual(t, len(sizes), 2, "sizes differ by at most one")
		}
	}
}

func TestOptions(t *testing.T) {
	o, err := parseOptions(nil, io.Discard)
	require.NoError(t, err)
	require.Equal(t, 4, o.np)
	require.Equal(t, "ddp", o.mode)
	require.Equal(t, 2, o.epochs)
	require.Equal(t, []int{784, 256, 256, 10}, o.layers)
	require.False(t, o.npSet)
	o, err = parseOptions([]string{"-np", "2", "-hidden", "10, 20,30"}, io.Discard)
	require.NoError(t, err)
	require.True(t, o.npSet)
	require.Equal(t, []int{784, 10, 20, 30, 10}, o.layers)
	for _, bad := range [][]string{
		{"-mode", "zero"}, {"-strategy", "zero4"}, {"-np", "0"}, {"-hidden", "10,x"}, {"-hidden", "0"}, {"-batch", "0"},
		{"-lr", "-1"}, {"-optimizer", "lbfgs"}, {"-train-samples", "70000"}, {"-compression", "bf16", "-mode", "single"},
		{"extra"},
	} {
		_, err := parseOptions(bad, io.Discard)
		require.Error(t, err, "%v", bad)
	}
	var stderr bytes.Buffer
	require.Equal(t, 2, run(context.Background(), []string{"-epochs", "0"}, io.Discard, &stderr))
	require.Contains(t, stderr.String(), "-epochs 0: want 1 or more")
}

func TestHashParamsCoversEveryValue(t *testing.T) {
	sets, err := loadMNIST()
	require.NoError(t, err)
	o, err := parseOptions([]string{"-mode", "single", "-hidden", "8"}, io.Discard)
	require.NoError(t, err)
	r, err := newReplica(&job{opts: o, train: sets[0], test: sets[1]})
	require.NoError(t, err)
	ps := r.model.Params()
	h := hashParams(ps)
	last := ps[len(ps)-1]
	last.Data[len(last.Data)-1] = float32(math.Nextafter32(last.Data[len(last.Data)-1], 10))
	require.NotEqual(t, h, hashParams(ps))
}
