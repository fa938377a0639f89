package main

import (
	"io"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/internal/nn"
)

// TestPipelineLossCurveEqualsSingle: -mode pipeline prints the loss curve
// of -mode single for 50 steps (to 1e-4 relative: the gradient sums group
// the rows by micro-batch and replica), for each schedule, with one
// pipeline and with 2 replicas of it (2-D), and stages of unequal size.
func TestPipelineLossCurveEqualsSingle(t *testing.T) {
	defer goleak.VerifyNone(t)
	args := []string{"-batch", "64", "-steps", "50", "-log-every", "1", "-seed", "7", "-hidden", "128,96,64"}
	single, singleAcc, _ := parseOutput(t, runInProcess(t, 1, append(args, "-mode", "single")...))
	require.Len(t, single, 50)
	require.Less(t, single[49], single[0]*0.5, "it learns")
	for _, c := range []struct {
		np, stages, m int
		schedule      string
		chunks        int
	}{
		{2, 2, 4, "1f1b", 1},
		{4, 4, 8, "1f1b", 1},
		{3, 3, 3, "gpipe", 1},
		{2, 2, 4, "interleaved", 2},
		{4, 2, 4, "1f1b", 1},  // 2 stages × 2 replicas
		{4, 2, 2, "gpipe", 2}, // looped, 2 replicas
	} {
		name := c.schedule + "/np=" + strconv.Itoa(c.np) + "/stages=" + strconv.Itoa(c.stages) + "/M=" + strconv.Itoa(c.m) + "/v=" + strconv.Itoa(c.chunks)
		t.Run(name, func(t *testing.T) {
			out := runInProcess(t, c.np, append(args, "-mode", "pipeline", "-np", strconv.Itoa(c.np), "-stages", strconv.Itoa(c.stages),
				"-microbatches", strconv.Itoa(c.m), "-schedule", c.schedule, "-chunks", strconv.Itoa(c.chunks))...)
			losses, acc, _ := parseOutput(t, out)
			require.Len(t, losses, 50)
			for k := range single {
				require.InEpsilon(t, single[k], losses[k], 1e-4, "step %d: single %v, pipeline %v", k+1, single[k], losses[k])
			}
			require.InDelta(t, singleAcc[0], acc[0], 0.002, "test accuracy over the whole model, gathered from the stages")
		})
	}
}

func TestPipelineOptions(t *testing.T) {
	o, err := parseOptions([]string{"-mode", "pipeline", "-schedule", "interleaved"}, io.Discard)
	require.NoError(t, err)
	m := o.modes["pipeline"].(*pipelineMode)
	require.Equal(t, 2, m.chunks, "interleaved defaults to 2 stages per rank")
	require.Equal(t, 2, m.stages)
	require.Equal(t, 4, m.microbatches)
	for _, bad := range [][]string{
		{"-mode", "pipeline", "-stages", "3"}, // -np 4
		{"-mode", "pipeline", "-schedule", "zb"},
		{"-mode", "pipeline", "-microbatches", "0"},
		{"-mode", "pipeline", "-schedule", "1f1b", "-chunks", "2"},
		{"-mode", "pipeline", "-checkpoint", "dir"},
	} {
		_, err := parseOptions(bad, io.Discard)
		require.Error(t, err, "%v", bad)
	}
	// More stages than Linear layers: every rank says so.
	sets, err := loadMNIST()
	require.NoError(t, err)
	o, err = parseOptions([]string{"-mode", "pipeline", "-np", "4", "-stages", "4", "-hidden", "32"}, io.Discard)
	require.NoError(t, err)
	r, err := newReplica(&job{opts: o, train: sets[0], test: sets[1]})
	require.NoError(t, err)
	_, err = cutModel(r.model, 4)
	require.ErrorContains(t, err, "an MLP of 2 Linear layers cannot be cut into 4 stages")
}

// TestCutModelBalancesWeights: the stages are whole Linear+ReLU units, in
// order, and the largest stage's weights are as few as a cut can make them.
func TestCutModelBalancesWeights(t *testing.T) {
	model, err := nn.NewMLP([]int{100, 50, 50, 50, 40, 10}, 1)
	require.NoError(t, err)
	// Units of 5000, 2500, 2500, 2000 and 400 weights.
	for n, want := range map[int]int{1: 12400, 2: 7400, 3: 5000, 4: 5000, 5: 5000} {
		stages, err := cutModel(model, n)
		require.NoError(t, err)
		require.Len(t, stages, n)
		var names []string
		largest := 0
		for _, st := range stages {
			require.NotEmpty(t, st)
			weights := 0
			for _, l := range st {
				for _, p := range l.Params() {
					names = append(names, p.Name)
				}
				if lin, ok := l.(*nn.Linear); ok {
					weights += lin.InSize() * lin.OutSize()
				}
			}
			largest = max(largest, weights)
		}
		require.Equal(t, want, largest, "%d stages", n)
		var all []string
		for _, p := range model.Params() {
			all = append(all, p.Name)
		}
		require.Equal(t, all, names, "every parameter once, in order")
	}
}
