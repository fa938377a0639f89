package shard_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/shard"
)

// newOn runs shard.New on every rank of an n-rank job, rank r with
// units(r) and opts(r), and returns each rank's error.
func newOn(t *testing.T, n int, units func(r int) [][]*parallel.Param, opts func(r int) shard.Options) []error {
	t.Helper()
	comms, err := localComms(n)
	require.NoError(t, err)
	j := &job{comms: comms, fss: make([]*shard.FSDP, n)}
	defer func() {
		for r, c := range comms {
			if j.fss[r] != nil {
				j.fss[r].Close()
			}
			c.Close()
		}
	}()
	return j.all(func(r int) (err error) {
		j.fss[r], err = shard.New(ctx, comms[r], units(r), opts(r))
		return err
	})
}

// TestNewRefusesUnitsThatDiffer: a rank whose units or options differ from
// rank 0's, or are invalid, fails New on every rank with an error naming
// the difference; the rank at fault says what it has.
func TestNewRefusesUnitsThatDiffer(t *testing.T) {
	leakCheck(t)
	const n, odd = 3, 2
	same := func(int) shard.Options { return shard.Options{} }
	for _, tc := range []struct {
		name   string
		units  func() [][]*parallel.Param // rank odd's
		opts   func(r int) shard.Options
		class  error
		every  string // in every rank's error
		atSelf string // in rank odd's
	}{
		{"longer parameter", layout{{7, 3}, {1}, {10, 2, 6}, {4}}.model, same, collective.ErrMismatch,
			`rank 2's units differ from rank 0's at unit 2: rank 0's parameter #2 is "u2.p2" with 5 values`, `this rank's is "u2.p2" with 6 values`},
		{"fewer units", layout{{7, 3}, {1}, {10, 2, 5}}.model, same, collective.ErrMismatch,
			"rank 2's units differ from rank 0's at unit 3", "this rank's has only 3 units"},
		{"parameters regrouped", regrouped, same, collective.ErrMismatch, "at unit 0", ""},
		{"renamed", func() [][]*parallel.Param {
			us := oddLayout.model()
			us[1][0].Name = "bias"
			return us
		}, same, collective.ErrMismatch, `rank 0's parameter #0 is "u1.p0"`, `this rank's is "bias"`},
		{"strategy", oddLayout.model, func(r int) shard.Options {
			if r == odd {
				return shard.Options{Strategy: shard.ShardGradOp}
			}
			return shard.Options{}
		}, collective.ErrMismatch, "rank 2's Options.Strategy differs from rank 0's (FullShard)", "this rank's is ShardGradOp"},
		{"prefetch", oddLayout.model, func(r int) shard.Options { return shard.Options{Prefetch: 1 + r/odd} },
			collective.ErrMismatch, "Options.Prefetch differs", ""},
		{"nil parameter", func() [][]*parallel.Param {
			us := oddLayout.model()
			us[2][1] = nil
			return us
		}, same, collective.ErrInvalid, "rank 2's units or options are invalid", "unit 2's parameter #1 is nil"},
		{"one parameter in two units", func() [][]*parallel.Param {
			us := oddLayout.model()
			us[3] = append(us[3], us[0][0])
			return us
		}, same, collective.ErrInvalid, "invalid", `two parameters are called "u0.p0"`},
		{"hybrid group that does not divide", oddLayout.model, func(int) shard.Options {
			return shard.Options{Strategy: shard.Hybrid, GroupSize: 2}
		}, collective.ErrInvalid, "invalid", "GroupSize that divides the 3 ranks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := newOn(t, n, func(r int) [][]*parallel.Param {
				if r == odd {
					return tc.units()
				}
				return oddLayout.model()
			}, tc.opts)
			for r, err := range errs {
				require.ErrorIs(t, err, tc.class, "rank %d", r)
				if r == odd && tc.atSelf != "" {
					require.Contains(t, err.Error(), tc.atSelf, "rank %d", r)
				}
				if r != odd || tc.class == collective.ErrMismatch {
					require.Contains(t, err.Error(), tc.every, "rank %d", r)
				}
			}
		})
	}
}

// TestMisuseStopsEveryRank: a call out of order on one rank (a bug in the
// caller) returns an error saying what is wrong there, and every other
// rank's next call fails (naming that rank) instead of waiting for it.
func TestMisuseStopsEveryRank(t *testing.T) {
	leakCheck(t)
	const n, odd = 3, 1
	for _, tc := range []struct {
		name string
		bad  func(fs *shard.FSDP) error // what rank odd does instead of a step
		says string
	}{
		{"release before gather", func(fs *shard.FSDP) error { return fs.Release(2) }, "unit 2 is not gathered"},
		{"reduce without backward", func(fs *shard.FSDP) error {
			if err := fs.Gather(ctx, 0); err != nil {
				return err
			}
			return fs.ReduceGrads(ctx, 0)
		}, "call GatherBackward(0) before its backward"},
		{"gather twice", func(fs *shard.FSDP) error {
			if err := fs.Gather(ctx, 0); err != nil {
				return err
			}
			return fs.Gather(ctx, 0)
		}, "unit 0 is gathered already"},
		{"step with a unit gathered", func(fs *shard.FSDP) error {
			if err := fs.Gather(ctx, 0); err != nil {
				return err
			}
			return fs.Step(ctx, adam())
		}, "unit 0 is still gathered"},
		{"step with synchronisation off", func(fs *shard.FSDP) error {
			if err := fs.SetGradSync(false); err != nil {
				return err
			}
			return fs.Step(ctx, adam())
		}, "gradient synchronisation is off"},
		{"more gathered than the bound", func(fs *shard.FSDP) error {
			for u := range 3 {
				if err := fs.Gather(ctx, u); err != nil {
					return err
				}
			}
			return nil
		}, "the MaxGathered bound"},
		{"no such unit", func(fs *shard.FSDP) error { return fs.Gather(ctx, 4) }, "there are units 0 to 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := newJob(t, n, shard.Options{}, oddLayout.model)
			errs := j.all(func(r int) error {
				if r == odd {
					return tc.bad(j.fss[r])
				}
				_, err := trainFSDP(j.fss[r], j.units[r], adam(), fsdpRun{steps: 3, micro: 1})
				return err
			})
			for r, err := range errs {
				require.Error(t, err, "rank %d", r)
				if r == odd {
					require.ErrorIs(t, err, collective.ErrInvalid)
					require.Contains(t, err.Error(), tc.says)
				} else {
					require.ErrorIs(t, err, collective.ErrAborted, "rank %d", r)
					require.Contains(t, err.Error(), fmt.Sprintf("rank %d", odd), "rank %d names the rank at fault", r)
				}
			}
		})
	}
}

// TestRanksGatheringDifferentUnitsFailAtStep: ranks that gather and reduce
// units of the same size in different orders exchange the wrong units'
// data, which no collective can tell; Step's check of what each rank
// issued catches it on every rank before the optimizer uses it.
func TestRanksGatheringDifferentUnitsFailAtStep(t *testing.T) {
	leakCheck(t)
	const n = 3
	equal := layout{{4}, {2, 2}, {3, 1}}
	j := newJob(t, n, shard.Options{Prefetch: -1}, equal.model)
	before := make([][][]float32, n)
	errs := j.all(func(r int) error {
		fs := j.fss[r]
		order := []int{0, 1, 2}
		if r == 2 {
			order = []int{0, 2, 1}
		}
		for _, u := range order {
			if err := fs.Gather(ctx, u); err != nil {
				return err
			}
			before[r] = append(before[r], paramsOf([][]*parallel.Param{j.units[r][u]})...)
			if err := fs.Release(u); err != nil {
				return err
			}
		}
		return fs.Step(ctx, sgd())
	})
	for r, err := range errs {
		require.ErrorIs(t, err, collective.ErrMismatch, "rank %d", r)
		require.Contains(t, err.Error(), "gathered or reduced different units", "rank %d", r)
	}
	require.NotEqual(t, before[0], before[2], "rank 2 did see other parameters: the check is what caught it")
}

// TestParametersExistOnlyWhileGathered: p.Data and p.Grad are nil outside
// Gather..Release, under every strategy; in forward p.Data is whole and
// p.Grad nil; in backward p.Grad is the full length, zero at each
// backward's start.
func TestParametersExistOnlyWhileGathered(t *testing.T) {
	leakCheck(t)
	for _, st := range []shard.Strategy{shard.FullShard, shard.ShardGradOp, shard.ShardOptimizer, shard.NoShard, shard.Hybrid} {
		t.Run(st.String(), func(t *testing.T) {
			j := newJob(t, 2, shard.Options{Strategy: st, GroupSize: 1}, oddLayout.model)
			require.NoError(t, errors.Join(j.all(func(r int) error {
				fs, units := j.fss[r], j.units[r]
				nilEverywhere := func(when string) error {
					for _, p := range fs.Params() {
						if p.Data != nil || p.Grad != nil {
							return fmt.Errorf("%s: %s has %d values, %d gradients", when, p.Name, len(p.Data), len(p.Grad))
						}
					}
					return nil
				}
				if err := nilEverywhere("after New"); err != nil {
					return err
				}
				for step := range 2 {
					for u := range units {
						if err := fs.Gather(ctx, u); err != nil {
							return err
						}
						for k, p := range units[u] {
							if len(p.Data) != oddLayout[u][k] || p.Grad != nil {
								return fmt.Errorf("forward of unit %d: %s has %d values and %d gradients (nil: %v)", u, p.Name, len(p.Data), len(p.Grad), p.Grad == nil)
							}
						}
						if err := fs.GatherBackward(ctx, u); err != nil {
							return err
						}
						for k, p := range units[u] {
							if len(p.Data) != oddLayout[u][k] || len(p.Grad) != oddLayout[u][k] {
								return fmt.Errorf("unit %d: %s has %d values and %d gradients", u, p.Name, len(p.Data), len(p.Grad))
							}
							for _, g := range p.Grad {
								if g != 0 {
									return fmt.Errorf("step %d: %s's gradient starts at %v", step, p.Name, g)
								}
							}
							rankGrad(p, r, 2, step, true)
						}
						if err := fs.ReduceGrads(ctx, u); err != nil {
							return err
						}
						for _, p := range units[u] {
							if p.Grad != nil || p.Data == nil {
								return fmt.Errorf("after ReduceGrads: %s has %d values and %d gradients", p.Name, len(p.Data), len(p.Grad))
							}
						}
						if err := fs.Release(u); err != nil {
							return err
						}
					}
					if err := nilEverywhere("after the backward"); err != nil {
						return err
					}
					if err := fs.Step(ctx, adam()); err != nil {
						return err
					}
					if err := nilEverywhere("after Step"); err != nil {
						return err
					}
				}
				return nil
			})...))
		})
	}
}

// TestContexts: a context cancelled once a call has returned does not
// touch the collectives that call left running (prefetches, reductions);
// a call whose context ends while it waits fails with the context's cause,
// and every other rank's next call fails naming that rank.
func TestContexts(t *testing.T) {
	leakCheck(t)
	const n, odd = 3, 1
	j := newJob(t, n, shard.Options{Prefetch: 2}, oddLayout.model)
	require.NoError(t, errors.Join(j.all(func(r int) error {
		fs := j.fss[r]
		for u := range j.units[r] {
			short, cancel := context.WithCancel(ctx)
			err := fs.Gather(short, u) // starts gathering the next 2
			cancel()
			if err != nil {
				return err
			}
			if err := fs.Release(u); err != nil {
				return err
			}
		}
		for u := len(j.units[r]) - 1; u >= 0; u-- {
			short, cancel := context.WithCancel(ctx)
			err := fs.GatherBackward(short, u)
			if err == nil {
				err = fs.ReduceGrads(short, u) // runs on after cancel
			}
			cancel()
			if err != nil {
				return err
			}
			if err := fs.Release(u); err != nil {
				return err
			}
		}
		return fs.Step(ctx, adam())
	})...))
	errs := j.all(func(r int) error {
		if r == odd {
			gone, cancel := context.WithCancelCause(ctx)
			cancel(errors.New("the caller gave up"))
			return j.fss[r].Gather(gone, 1) // its prefetch (Step started it) is waited for: abandoned
		}
		_, err := trainFSDP(j.fss[r], j.units[r], adam(), fsdpRun{steps: 2, micro: 1})
		return err
	})
	for r, err := range errs {
		if r == odd {
			require.ErrorContains(t, err, "the caller gave up")
			continue
		}
		require.ErrorIs(t, err, collective.ErrAborted, "rank %d", r)
		require.Contains(t, err.Error(), fmt.Sprintf("rank %d", odd), "rank %d", r)
	}
}
