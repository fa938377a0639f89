package shard_test

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/shard"
)

// regrouped is oddLayout's parameters in other units (the same names and
// lengths): a checkpoint does not depend on the grouping.
func regrouped() [][]*parallel.Param {
	ps := flat(oddLayout.model())
	return [][]*parallel.Param{{ps[0]}, {ps[1], ps[2], ps[3]}, {ps[4], ps[5], ps[6]}}
}

// session is one FSDP job of the checkpoint tests.
type session struct {
	n     int
	opts  shard.Options
	units func() [][]*parallel.Param
}

func (s session) String() string {
	return fmt.Sprintf("%d ranks %v/group %d", s.n, s.opts.Strategy, s.opts.GroupSize)
}

// run trains steps [from, to) with Adam on s's ranks, first loading path
// (when not empty) and then saving to save (when not empty, sharded when
// sharded); it returns each rank's result.
func (s session) run(t *testing.T, from, to int, load, save string, sharded bool) []result {
	t.Helper()
	res := make([]result, s.n)
	onRanks(t, s.n, func(c *collective.Comm) error {
		units := s.units()
		fs, err := shard.New(ctx, c, units, s.opts)
		if err != nil {
			return err
		}
		defer fs.Close()
		opt := adam()
		if load != "" {
			ck, err := fs.Load(ctx, load, opt)
			if err != nil {
				return err
			}
			if int(ck.Step) != from || fs.Steps() != from {
				return fmt.Errorf("loaded step %d, %d optimizer steps; want %d", ck.Step, fs.Steps(), from)
			}
		}
		res[c.Rank()], err = trainFSDP(fs, units, opt, fsdpRun{from: from, steps: to, micro: 1})
		if err != nil {
			return err
		}
		if save == "" {
			return nil
		}
		ck := &checkpoint.Checkpoint{Step: int64(to), Meta: map[string]string{"run": "test"}}
		if sharded {
			return fs.SaveSharded(ctx, save, ck)
		}
		return fs.SaveFull(ctx, save, ck)
	})
	return res
}

// requireSameParams compares the final parameters of runs, bit for bit.
func requireSameParams(t *testing.T, want, got []result, what string) {
	t.Helper()
	for r := range got {
		requireBitwise(t, result{params: want[0].params}, result{params: got[r].params}, "%s, rank %d", what, r)
	}
}

// TestShardedCheckpointReshards: a sharded checkpoint saved at N = 4 after
// k steps, loaded at N = 2, 3 (and 1, 5), under every strategy and another
// unit grouping, and trained m more steps, ends bitwise where an
// uninterrupted run of k+m steps at the new N ends (exact data: the runs at
// every N are the same).
func TestShardedCheckpointReshards(t *testing.T) {
	leakCheck(t)
	const k, m = 4, 3
	for _, saver := range []session{
		{4, shard.Options{Strategy: shard.FullShard}, oddLayout.model},
		{4, shard.Options{Strategy: shard.Hybrid, GroupSize: 2}, oddLayout.model},
		{4, shard.Options{Strategy: shard.ShardOptimizer}, regrouped},
	} {
		dir := filepath.Join(t.TempDir(), "ckpt")
		saver.run(t, 0, k, "", dir, true)
		for _, loader := range []session{
			{2, shard.Options{Strategy: shard.FullShard}, oddLayout.model},
			{3, shard.Options{Strategy: shard.FullShard}, oddLayout.model},
			{3, shard.Options{Strategy: shard.ShardGradOp}, regrouped},
			{1, shard.Options{Strategy: shard.FullShard}, oddLayout.model},
			{5, shard.Options{Strategy: shard.ShardOptimizer}, oddLayout.model},
			{2, shard.Options{Strategy: shard.NoShard}, oddLayout.model},
			{6, shard.Options{Strategy: shard.Hybrid, GroupSize: 3}, regrouped},
		} {
			t.Run(fmt.Sprintf("%v to %v", saver, loader), func(t *testing.T) {
				whole := loader.run(t, 0, k+m, "", "", false)
				resumed := loader.run(t, k, k+m, dir, "", false)
				requireSameParams(t, whole, resumed, "resumed")
			})
		}
	}
}

// TestFullCheckpointRoundTrips: a full checkpoint saved by FSDP loads into
// FSDP at another N and strategy, and into DataParallel with the model
// library's ParamOptimizer; and DataParallel's loads into FSDP: each
// resumed run ends bitwise where an uninterrupted one does.
func TestFullCheckpointRoundTrips(t *testing.T) {
	leakCheck(t)
	const k, m = 3, 3
	path := filepath.Join(t.TempDir(), "full.ckpt")
	session{3, shard.Options{Strategy: shard.FullShard}, oddLayout.model}.run(t, 0, k, "", path, false)

	loader := session{2, shard.Options{Strategy: shard.ShardGradOp}, regrouped}
	whole := loader.run(t, 0, k+m, "", "", false)
	requireSameParams(t, whole, loader.run(t, k, k+m, path, "", false), "FSDP from FSDP's full checkpoint")

	// DataParallel resumes from it, and saves one FSDP resumes from.
	dpPath := filepath.Join(t.TempDir(), "dp.ckpt")
	dpRes := resumeDDP(t, 2, path, k, k+m, dpPath, k+m-1)
	requireSameParams(t, whole, dpRes, "DataParallel from FSDP's full checkpoint")
	fromDP := session{4, shard.Options{Strategy: shard.FullShard}, oddLayout.model}
	requireSameParams(t, whole, fromDP.run(t, k+m-1, k+m, dpPath, "", false), "FSDP from DataParallel's checkpoint")
}

// resumeDDP loads path into DataParallel with the model library's
// ParamOptimizer on n ranks, trains steps [from, to) and returns the
// results; at step saveAt it first saves a checkpoint to save (when save
// is not empty).
func resumeDDP(t *testing.T, n int, path string, from, to int, save string, saveAt int) []result {
	t.Helper()
	res := make([]result, n)
	onRanks(t, n, func(c *collective.Comm) error {
		params := flat(oddLayout.model())
		dp, err := parallel.NewDataParallel(ctx, c, params, parallel.DataParallelOptions{})
		if err != nil {
			return err
		}
		defer dp.Close()
		po, err := nn.NewParamOptimizer(adam(), params)
		if err != nil {
			return err
		}
		ck, err := dp.LoadCheckpoint(ctx, path)
		if err != nil {
			return err
		}
		if int(ck.Step) != from {
			return fmt.Errorf("loaded step %d, want %d", ck.Step, from)
		}
		if err := po.LoadState(int(ck.Step), ck.Tensors); err != nil {
			return err
		}
		for t := from; t < to; t++ {
			if t == saveAt && save != "" {
				out := &checkpoint.Checkpoint{Step: int64(t), Tensors: po.StateTensors()}
				if err := dp.SaveCheckpoint(ctx, save, out); err != nil {
					return err
				}
			}
			for _, p := range params {
				rankGrad(p, c.Rank(), c.Size(), t, false)
			}
			if err := dp.Sync(ctx); err != nil {
				return err
			}
			if err := po.Step(); err != nil {
				return err
			}
		}
		for _, p := range params {
			res[c.Rank()].params = append(res[c.Rank()].params, slices.Clone(p.Data))
		}
		return nil
	})
	return res
}

// TestConsolidatedShardedCheckpointLoadsIntoDataParallel: a sharded
// checkpoint turned into one file by Consolidate is what SaveFull writes:
// DataParallel resumes from it bitwise. A missing shard file is refused.
func TestConsolidatedShardedCheckpointLoadsIntoDataParallel(t *testing.T) {
	leakCheck(t)
	const k, m = 3, 2
	dir := filepath.Join(t.TempDir(), "ckpt")
	path := filepath.Join(t.TempDir(), "whole.ckpt")
	session{3, shard.Options{Strategy: shard.Hybrid, GroupSize: 3}, regrouped}.run(t, 0, k, "", dir, true)
	require.NoError(t, shard.Consolidate(dir, path))
	whole := session{2, shard.Options{}, oddLayout.model}.run(t, 0, k+m, "", "", false)
	requireSameParams(t, whole, resumeDDP(t, 2, path, k, k+m, "", -1), "DataParallel from a consolidated checkpoint")

	shards, err := filepath.Glob(filepath.Join(dir, "shard-*"))
	require.NoError(t, err)
	require.NoError(t, os.Remove(shards[2]))
	require.ErrorIs(t, shard.Consolidate(dir, path), checkpoint.ErrCorrupt)
}

// job is an FSDP job kept across calls: each call runs a function on
// every rank at once.
type job struct {
	comms []*collective.Comm
	fss   []*shard.FSDP
	units [][][]*parallel.Param
}

func newJob(t *testing.T, n int, opts shard.Options, units func() [][]*parallel.Param) *job {
	t.Helper()
	comms, err := localComms(n)
	require.NoError(t, err)
	j := &job{comms: comms, fss: make([]*shard.FSDP, n), units: make([][][]*parallel.Param, n)}
	t.Cleanup(func() {
		for r, c := range j.comms {
			if j.fss[r] != nil {
				j.fss[r].Close()
			}
			c.Close()
		}
	})
	require.NoError(t, errors.Join(j.all(func(r int) (err error) {
		j.units[r] = units()
		j.fss[r], err = shard.New(ctx, comms[r], j.units[r], opts)
		return err
	})...))
	return j
}

// all runs fn on every rank at once and returns each rank's error.
func (j *job) all(fn func(r int) error) []error { return testjob.Each(len(j.comms), fn) }

// load has every rank load path with Adam, and returns each rank's error
// and its parameters afterwards.
func (j *job) load(path string) ([]error, [][][]float32) {
	params := make([][][]float32, len(j.comms))
	errs := j.all(func(r int) error {
		_, err := j.fss[r].Load(ctx, path, adam())
		params[r], _ = fullParams(j.fss[r], j.units[r])
		return err
	})
	return errs, params
}

// loadAll is load on a fresh n-rank FullShard job.
func loadAll(t *testing.T, n int, path string, units func() [][]*parallel.Param) ([]error, [][][]float32) {
	t.Helper()
	return newJob(t, n, shard.Options{}, units).load(path)
}

// TestTruncatedCheckpointRefusedAtEveryByte: a sharded checkpoint's
// meta.ckpt and shard files, and a full checkpoint, cut at every byte
// (and one flipped bit per byte of a shard file) make every rank's Load
// fail with checkpoint.ErrCorrupt (ErrVersion for the version's bytes)
// naming the file, and leave the model as
// it was: the job goes on.
func TestTruncatedCheckpointRefusedAtEveryByte(t *testing.T) {
	leakCheck(t)
	small := layout{{3, 2}, {1}, {4}}
	dir := filepath.Join(t.TempDir(), "ckpt")
	full := filepath.Join(t.TempDir(), "full.ckpt")
	session{2, shard.Options{}, small.model}.run(t, 0, 2, "", dir, true)
	session{2, shard.Options{}, small.model}.run(t, 0, 2, "", full, false)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var files []string
	for _, e := range entries {
		files = append(files, filepath.Join(dir, e.Name()))
	}
	require.Len(t, files, 3, "meta.ckpt and 2 shard files: %v", files)
	fresh := small.model()
	j := newJob(t, 2, shard.Options{}, small.model) // one job refuses them all, and stays usable
	check := func(file string, cut int, errs []error, params [][][]float32) {
		for r, err := range errs {
			require.Error(t, err, "%s cut at %d, rank %d", file, cut, r)
			if cut < 0 && errors.Is(err, checkpoint.ErrVersion) {
				require.True(t, -cut >= 8 && -cut < 12, "only the version's bytes flip into another version, not byte %d", -cut)
			} else {
				require.ErrorIs(t, err, checkpoint.ErrCorrupt, "%s cut at %d, rank %d", file, cut, r)
			}
			require.NotErrorIs(t, err, collective.ErrAborted, "a refused checkpoint leaves the job usable")
			require.Contains(t, err.Error(), filepath.Base(file), "rank %d names the file", r)
			requireBitwise(t, result{params: paramsOf(fresh)}, result{params: params[r]}, "%s cut at %d, rank %d: unchanged", file, cut, r)
		}
	}
	for _, file := range append(files, full) {
		whole, err := os.ReadFile(file)
		require.NoError(t, err)
		path := dir
		if file == full {
			path = full
		}
		for cut := range len(whole) {
			require.NoError(t, os.WriteFile(file, whole[:cut], 0o644))
			errs, params := j.load(path)
			check(file, cut, errs, params)
		}
		if strings.Contains(file, "shard-") {
			for i := range whole {
				flipped := slices.Clone(whole)
				flipped[i] ^= 0x10
				require.NoError(t, os.WriteFile(file, flipped, 0o644))
				errs, params := j.load(path)
				check(file, -i, errs, params)
			}
		}
		require.NoError(t, os.WriteFile(file, whole, 0o644))
	}
	// Intact again, it loads, into the same job.
	errs, _ := j.load(dir)
	require.NoError(t, errors.Join(errs...))
}

func paramsOf(units [][]*parallel.Param) [][]float32 {
	var out [][]float32
	for _, ps := range units {
		for _, p := range ps {
			out = append(out, slices.Clone(p.Data))
		}
	}
	return out
}

// TestBadCheckpointsNameTheProblemOnEveryRank: no checkpoint, a missing
// shard file, a shard file of another save, a checkpoint of another model
// or of another optimizer: every rank gets the same kind of error, saying
// what is wrong, and no rank hangs.
func TestBadCheckpointsNameTheProblemOnEveryRank(t *testing.T) {
	leakCheck(t)
	base := t.TempDir()
	dir := filepath.Join(base, "ckpt")
	s := session{3, shard.Options{}, oddLayout.model}
	s.run(t, 0, 2, "", dir, true)
	shards, err := filepath.Glob(filepath.Join(dir, "shard-*"))
	require.NoError(t, err)
	require.Len(t, shards, 3)

	expect := func(path string, units func() [][]*parallel.Param, class error, text string) {
		t.Helper()
		errs, _ := loadAll(t, 3, path, units)
		for r, err := range errs {
			require.ErrorIs(t, err, class, "rank %d", r)
			require.Contains(t, err.Error(), text, "rank %d", r)
		}
	}
	expect(filepath.Join(base, "nothing"), oddLayout.model, iofs.ErrNotExist, "nothing")

	other := layout{{7, 3}, {1}, {10, 2, 6}, {4}} // u2.p2 is longer
	expect(dir, other.model, checkpoint.ErrInvalid, `parameter "u2.p2" has 5 values in it, 6 here`)
	renamed := func() [][]*parallel.Param {
		us := oddLayout.model()
		us[3][0].Name = "head"
		return us
	}
	expect(dir, renamed, checkpoint.ErrInvalid, `no parameter "head"`)

	// Another save's shard file in place of one of this save's.
	old := filepath.Join(base, "old")
	s.run(t, 0, 1, "", old, true)
	oldShards, err := filepath.Glob(filepath.Join(old, "shard-*"))
	require.NoError(t, err)
	saved, err := os.ReadFile(shards[1])
	require.NoError(t, err)
	other1, err := os.ReadFile(oldShards[1])
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(shards[1], other1, 0o644))
	expect(dir, oddLayout.model, checkpoint.ErrCorrupt, "of save")

	require.NoError(t, os.Remove(shards[1]))
	expect(dir, oddLayout.model, checkpoint.ErrCorrupt, filepath.Base(shards[1])+" is missing")
	require.NoError(t, os.WriteFile(shards[1], saved, 0o644))

	// Another optimizer's state.
	errs := make([]error, 3)
	onRanks(t, 3, func(c *collective.Comm) error {
		fs, err := shard.New(ctx, c, oddLayout.model(), shard.Options{})
		if err != nil {
			return err
		}
		defer fs.Close()
		_, errs[c.Rank()] = fs.Load(ctx, dir, sgd())
		return nil
	})
	for r, err := range errs {
		require.ErrorIs(t, err, checkpoint.ErrInvalid, "rank %d", r)
		require.Contains(t, err.Error(), "momentum_buffer", "rank %d", r)
	}
}

// TestInterruptedSaveLeavesThePreviousCheckpoint: what a save interrupted
// before its commit leaves behind (another save's shard files, a
// temporary meta file) does not change what Load reads, and the next save
// removes it.
func TestInterruptedSaveLeavesThePreviousCheckpoint(t *testing.T) {
	leakCheck(t)
	dir := filepath.Join(t.TempDir(), "ckpt")
	s := session{2, shard.Options{}, oddLayout.model}
	s.run(t, 0, 2, "", dir, true)
	shards, err := filepath.Glob(filepath.Join(dir, "shard-*"))
	require.NoError(t, err)
	for i, f := range shards {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("shard-00000000deadbeef-%05d-of-00002.ckpt", i)), b[:len(b)/2], 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "meta.ckpt.tmp-123"), []byte("RINGOCK"), 0o644))
	whole := s.run(t, 0, 4, "", "", false)
	resumed := s.run(t, 2, 4, dir, dir, true)
	requireSameParams(t, whole, resumed, "resumed past an interrupted save")
	left, err := filepath.Glob(filepath.Join(dir, "*"))
	require.NoError(t, err)
	require.Len(t, left, 3, "meta.ckpt and the new save's 2 shard files: %v", left)
}
