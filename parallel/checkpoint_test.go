package parallel_test

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/internal/testmodel"
)

// job is one run of n ranks training the test model with momentum SGD.
type job struct {
	t      *testing.T
	n      int
	models []*testmodel.Model
	opts   []*momentum
	dps    []*parallel.DataParallel
}

// startJob forms a fresh job; every rank but 0 starts from junk values
// (and every rank from zero momentum).
func startJob(t *testing.T, n int, junk bool) *job {
	j := &job{t: t, n: n}
	params := make([][]*parallel.Param, n)
	for r := range n {
		m := testmodel.New(testmodel.HeadSizes(), junk || r != 0)
		j.models = append(j.models, m)
		j.opts = append(j.opts, newMomentum(m.Params))
		params[r] = m.Params
	}
	j.dps = newDP(t, local(t, n), params, tiny)
	return j
}

// train runs steps [from, to).
func (j *job) train(from, to int) {
	j.t.Helper()
	testjob.RequireAllOK(j.t, testjob.Each(j.n, func(r int) error {
		m := j.models[r]
		for step := from; step < to; step++ {
			m.Backward(step*j.n*perRank+r*perRank, perRank, 1, j.dps[r].Ready)
			if err := j.dps[r].Sync(ctx); err != nil {
				return err
			}
			j.opts[r].step(m.Params)
		}
		return nil
	}))
}

// momentumTensors names the optimizer's state, as a real optimizer would.
func (j *job) momentumTensors(r int) []checkpoint.Tensor {
	var ts []checkpoint.Tensor
	for i, p := range j.models[r].Params {
		ts = append(ts, checkpoint.Tensor{Name: p.Name + ".momentum", Data: j.opts[r].v[i]})
	}
	return ts
}

// A run saved after 5 steps and resumed by a fresh job (other ranks, junk
// parameters, zero momentum) ends, after 5 more, bitwise where an
// uninterrupted 10-step run ends: parameters and optimizer state.
func TestResumedRunContinuesBitwise(t *testing.T) {
	const n = 3
	path := filepath.Join(t.TempDir(), "model.ckpt")

	whole := startJob(t, n, false)
	whole.train(0, 10)

	first := startJob(t, n, false)
	first.train(0, 5)
	testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
		ck := &checkpoint.Checkpoint{Step: 5, Epoch: 1, RNG: []byte{42}, Meta: map[string]string{"model": "heads"}, Tensors: first.momentumTensors(r)}
		return first.dps[r].SaveCheckpoint(ctx, path, ck)
	}))

	resumed := startJob(t, n, true)
	steps := make([]int64, n)
	testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
		ck, err := resumed.dps[r].LoadCheckpoint(ctx, path)
		if err != nil {
			return err
		}
		for _, ts := range resumed.momentumTensors(r) {
			if err := ck.CopyTo(ts.Name, ts.Data); err != nil {
				return err
			}
		}
		if ck.Epoch != 1 || string(ck.RNG) != "\x2a" || ck.Meta["model"] != "heads" {
			return fmt.Errorf("metadata %d %v %v", ck.Epoch, ck.RNG, ck.Meta)
		}
		steps[r] = ck.Step
		return nil
	}))
	assert.Equal(t, []int64{5, 5, 5}, steps)
	resumed.train(5, 10)

	for r := range n {
		require.NoError(t, testmodel.SameBits(resumed.models[r].Params, whole.models[r].Params), "rank %d", r)
		for i := range whole.opts[r].v {
			require.Equal(t, whole.opts[r].v[i], resumed.opts[r].v[i], "rank %d momentum %d", r, i)
		}
	}
	// The file is the documented format, readable on its own.
	ck, err := checkpoint.Load(path)
	require.NoError(t, err)
	require.Len(t, ck.Tensors, 2*2*len(testmodel.HeadSizes()), "parameters, then momentum")
	assert.Equal(t, "head0.w", ck.Tensors[0].Name)
	assert.Equal(t, "head0.w.momentum", ck.Tensors[2*len(testmodel.HeadSizes())].Name)
}

// Loading fails on every rank alike: no file (fs.ErrNotExist, to start
// from scratch), a damaged file, a checkpoint of another model. A failed
// load changes no parameter.
func TestLoadCheckpointErrorsAreTheSameOnEveryRank(t *testing.T) {
	const n = 3
	dir := t.TempDir()
	j := startJob(t, n, false)
	load := func(path string) []error {
		return testjob.Each(n, func(r int) error {
			_, err := j.dps[r].LoadCheckpoint(ctx, path)
			return err
		})
	}
	for r, err := range load(filepath.Join(dir, "none")) {
		require.ErrorIs(t, err, fs.ErrNotExist, "rank %d", r)
	}

	good := filepath.Join(dir, "good")
	testjob.RequireAllOK(t, testjob.Each(n, func(r int) error { return j.dps[r].SaveCheckpoint(ctx, good, nil) }))
	b, err := os.ReadFile(good)
	require.NoError(t, err)
	cut := filepath.Join(dir, "cut")
	require.NoError(t, os.WriteFile(cut, b[:len(b)-10], 0o644))
	for r, err := range load(cut) {
		require.ErrorIs(t, err, checkpoint.ErrCorrupt, "rank %d", r)
		assert.ErrorContains(t, err, "truncated", "rank %d", r)
	}

	other := filepath.Join(dir, "other")
	ck := &checkpoint.Checkpoint{}
	for _, p := range j.models[0].Params {
		ck.Add(p.Name, make([]float32, len(p.Data)))
	}
	ck.Tensors[3].Data = ck.Tensors[3].Data[:0] // head1.b has no value
	require.NoError(t, checkpoint.Save(other, ck))
	before := fmt.Sprint(j.models[1].Params[0].Data)
	for r, err := range load(other) {
		require.ErrorIs(t, err, checkpoint.ErrInvalid, "rank %d", r)
		assert.ErrorContains(t, err, `tensor "head1.b" has 0 values, want 1`, "rank %d", r)
	}
	assert.Equal(t, before, fmt.Sprint(j.models[1].Params[0].Data), "head0.w unchanged")

	// Every rank can still train: the failed loads left the job usable.
	j.train(0, 1)
}

// Rank 0's failure to save reaches every rank; a tensor named like a
// parameter is refused.
func TestSaveCheckpointErrorsReachEveryRank(t *testing.T) {
	const n = 2
	j := startJob(t, n, false)
	errs := testjob.Each(n, func(r int) error {
		return j.dps[r].SaveCheckpoint(ctx, filepath.Join(t.TempDir(), "no", "such", "dir", "ck"), nil)
	})
	for r, err := range errs {
		require.ErrorContains(t, err, "rank 0 could not save", "rank %d", r)
	}
	errs = testjob.Each(n, func(r int) error {
		ck := &checkpoint.Checkpoint{}
		ck.Add("head2.w", nil)
		return j.dps[r].SaveCheckpoint(ctx, filepath.Join(t.TempDir(), "ck"), ck)
	})
	for r, err := range errs {
		require.ErrorContains(t, err, `tensor "head2.w" has the name of a parameter`, "rank %d", r)
	}
}
