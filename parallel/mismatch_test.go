package parallel_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
)

// construct runs NewDataParallel on every rank with its own list and
// options, and returns each rank's error (closing what was made).
func construct(t *testing.T, lists [][]*parallel.Param, opts []parallel.DataParallelOptions) []error {
	t.Helper()
	comms := local(t, len(lists))
	return testjob.Each(len(lists), func(r int) error {
		dp, err := parallel.NewDataParallel(ctx, comms[r], lists[r], opts[r])
		if err == nil {
			dp.Close()
		}
		return err
	})
}

func params(spec ...any) []*parallel.Param {
	var ps []*parallel.Param
	for i := 0; i < len(spec); i += 2 {
		n := spec[i+1].(int)
		ps = append(ps, &parallel.Param{Name: spec[i].(string), Data: make([]float32, n)})
	}
	return ps
}

func sameOpts(n int, o parallel.DataParallelOptions) []parallel.DataParallelOptions {
	out := make([]parallel.DataParallelOptions, n)
	for i := range out {
		out[i] = o
	}
	return out
}

// Ranks whose parameter lists differ all fail, each with an error naming
// the first parameter that differs; the rank that differs also says what
// it has.
func TestDifferentParameterListsFailEveryRankNamingTheParameter(t *testing.T) {
	base := func() []*parallel.Param { return params("emb", 10, "fc1.w", 6, "fc1.b", 3, "fc2.w", 4) }
	for _, tc := range []struct {
		name  string
		odd   []*parallel.Param // rank 2's list
		all   string            // in every rank's error
		rank2 string            // in rank 2's only
	}{
		{"name", params("emb", 10, "fc1.w", 6, "fc1.bias", 3, "fc2.w", 4),
			`rank 2's parameter #2 differs from rank 0's: rank 0's is "fc1.b" with 3 values`, `this rank's is "fc1.bias" with 3 values`},
		{"length", params("emb", 10, "fc1.w", 7, "fc1.b", 3, "fc2.w", 4),
			`rank 2's parameter #1 differs from rank 0's: rank 0's is "fc1.w" with 6 values`, `this rank's is "fc1.w" with 7 values`},
		{"fewer", params("emb", 10, "fc1.w", 6, "fc1.b", 3),
			`rank 2's parameter #3 differs from rank 0's: rank 0's is "fc2.w" with 4 values`, "this rank has only 3"},
		{"more", params("emb", 10, "fc1.w", 6, "fc1.b", 3, "fc2.w", 4, "fc2.b", 1),
			`rank 2's parameter #4 differs from rank 0's: rank 0 has only 4 parameters`, `this rank's is "fc2.b" with 1 values`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lists := [][]*parallel.Param{base(), base(), tc.odd, base()}
			errs := construct(t, lists, sameOpts(4, parallel.DataParallelOptions{}))
			for r, err := range errs {
				require.ErrorIs(t, err, collective.ErrMismatch, "rank %d", r)
				assert.ErrorContains(t, err, tc.all, "rank %d", r)
				if r == 2 {
					assert.ErrorContains(t, err, tc.rank2)
				} else {
					assert.NotContains(t, err.Error(), "this rank", "rank %d", r)
				}
			}
		})
	}
	// Two ranks differ at different places: every rank names the first.
	lists := [][]*parallel.Param{base(), params("emb", 10, "fc1.w", 6, "x", 3, "fc2.w", 4), params("emb", 10, "y", 6, "fc1.b", 3, "fc2.w", 4)}
	for r, err := range construct(t, lists, sameOpts(3, parallel.DataParallelOptions{})) {
		require.ErrorContains(t, err, `rank 2's parameter #1 differs from rank 0's: rank 0's is "fc1.w"`, "rank %d", r)
	}
}

func TestDifferentOptionsFailEveryRank(t *testing.T) {
	for _, tc := range []struct {
		odd  parallel.DataParallelOptions
		want string
	}{
		{parallel.DataParallelOptions{BucketBytes: 1 << 10}, "rank 1's DataParallelOptions.BucketBytes differs from rank 0's (26214400)"},
		{parallel.DataParallelOptions{FirstBucketBytes: 1 << 10}, "FirstBucketBytes differs from rank 0's (1048576)"},
		{parallel.DataParallelOptions{Compression: "bf16"}, `Compression differs from rank 0's ("")`},
	} {
		lists := [][]*parallel.Param{params("a", 3), params("a", 3)}
		errs := construct(t, lists, []parallel.DataParallelOptions{{}, tc.odd})
		for r, err := range errs {
			require.ErrorIs(t, err, collective.ErrMismatch, "rank %d", r)
			assert.ErrorContains(t, err, tc.want, "rank %d", r)
		}
	}
}

// An invalid list or option on one rank fails every rank; the rank at
// fault says what is wrong, with ErrInvalid.
func TestInvalidParametersOnOneRankFailEveryRank(t *testing.T) {
	good := func() []*parallel.Param { return params("a", 3, "b", 2) }
	for _, tc := range []struct {
		name string
		list []*parallel.Param
		opts parallel.DataParallelOptions
		want string
	}{
		{"nil", []*parallel.Param{good()[0], nil}, parallel.DataParallelOptions{}, "parameter #1 is nil"},
		{"unnamed", params("a", 3, "", 2), parallel.DataParallelOptions{}, "parameter #1 has no name"},
		{"twice", params("a", 3, "a", 2), parallel.DataParallelOptions{}, `parameters #0 and #1 are both called "a"`},
		{"grad length", []*parallel.Param{{Name: "a", Data: make([]float32, 3), Grad: make([]float32, 2)}, good()[1]},
			parallel.DataParallelOptions{}, `parameter #0 "a" has 3 values but 2 gradients`},
		{"empty", nil, parallel.DataParallelOptions{}, "no parameters"},
		{"negative", good(), parallel.DataParallelOptions{BucketBytes: -1}, "BucketBytes -1 is negative"},
		{"compression", good(), parallel.DataParallelOptions{Compression: "gzip"}, "gzip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, culprit := range []int{0, 1} { // rank 0's list is the reference: both cases
				lists := [][]*parallel.Param{good(), good(), good()}
				opts := sameOpts(3, parallel.DataParallelOptions{})
				lists[culprit], opts[culprit] = tc.list, tc.opts
				errs := construct(t, lists, opts)
				for r, err := range errs {
					require.ErrorIs(t, err, collective.ErrInvalid, "culprit %d, rank %d", culprit, r)
					if r == culprit {
						assert.ErrorContains(t, err, tc.want)
					} else {
						assert.ErrorContains(t, err, fmt.Sprintf("rank %d's parameter list or options are invalid", culprit))
					}
				}
			}
		})
	}
}

// syncSteps runs steps of Ready-all and Sync on one rank and returns the
// first error.
func syncSteps(dp *parallel.DataParallel, ps []*parallel.Param, steps int) error {
	for range steps {
		for i := len(ps) - 1; i >= 0; i-- {
			dp.Ready(ps[i])
		}
		if err := dp.Sync(ctx); err != nil {
			return err
		}
	}
	return nil
}

// A rank that calls Sync one step fewer, then closes its communicator or
// makes another call, makes every rank fail: never a hang, never a
// gradient averaged with another step's.
func TestARankOneStepShortFailsEveryRank(t *testing.T) {
	for _, then := range []string{"closes", "calls Barrier", "calls AllReduce"} {
		t.Run(then, func(t *testing.T) {
			const n, steps = 3, 4
			comms := local(t, n)
			lists := make([][]*parallel.Param, n)
			for r := range n {
				lists[r] = params("a", 7, "b", 1000, "c", 3)
			}
			dps := newDP(t, comms, lists, tiny)
			errs := testjob.Each(n, func(r int) error {
				if r != 1 {
					return syncSteps(dps[r], lists[r], steps)
				}
				if err := syncSteps(dps[r], lists[r], steps-1); err != nil {
					return fmt.Errorf("the short rank failed early: %w", err)
				}
				switch then {
				case "closes":
					dps[r].Close()
					return comms[r].Close()
				case "calls Barrier":
					return collective.Barrier(ctx, comms[r])
				}
				// The first bucket's size and op, deliberately: the call
				// still must not pass for the bucket's.
				return collective.AllReduce(ctx, comms[r], make([]float32, 3), collective.Sum)
			})
			for r, err := range errs {
				if r == 1 && then == "closes" {
					require.NoError(t, err)
					continue
				}
				require.Error(t, err, "rank %d", r)
				require.True(t, errors.Is(err, collective.ErrAborted) || errors.Is(err, collective.ErrMismatch), "rank %d: %v", r, err)
			}
		})
	}
}

// Misuse on one rank (Ready on a parameter that is not the DataParallel's,
// Ready twice, a replaced Grad slice, SetSync mid-step) fails that rank's
// Sync with ErrInvalid saying what, and every other rank's with ErrAborted
// naming the rank.
func TestMisuseOnOneRankStopsEveryRank(t *testing.T) {
	for _, tc := range []struct {
		name   string
		misuse func(dp *parallel.DataParallel, ps []*parallel.Param)
		want   string
	}{
		{"foreign", func(dp *parallel.DataParallel, ps []*parallel.Param) {
			dp.Ready(&parallel.Param{Name: "stranger"})
		}, `Ready("stranger"): not a parameter of this DataParallel`},
		{"nil", func(dp *parallel.DataParallel, ps []*parallel.Param) { dp.Ready(nil) }, "Ready(<nil>)"},
		{"twice", func(dp *parallel.DataParallel, ps []*parallel.Param) {
			dp.Ready(ps[2])
			dp.Ready(ps[2])
		}, `Ready("c") called twice in step 2`},
		{"replaced", func(dp *parallel.DataParallel, ps []*parallel.Param) {
			ps[0].Grad = make([]float32, len(ps[0].Data))
		}, `"a"'s Grad no longer points into its bucket`},
		{"SetSync", func(dp *parallel.DataParallel, ps []*parallel.Param) {
			dp.Ready(ps[2])
			dp.SetSync(false)
		}, "SetSync(false) in the middle of step 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n, culprit = 3, 2
			comms := local(t, n)
			lists := make([][]*parallel.Param, n)
			for r := range n {
				lists[r] = params("a", 7, "b", 1000, "c", 3)
			}
			dps := newDP(t, comms, lists, tiny)
			errs := testjob.Each(n, func(r int) error {
				if err := syncSteps(dps[r], lists[r], 1); err != nil {
					return fmt.Errorf("step 1: %w", err)
				}
				if r == culprit {
					tc.misuse(dps[r], lists[r])
				}
				return syncSteps(dps[r], lists[r], 2)
			})
			for r, err := range errs {
				require.Error(t, err, "rank %d", r)
				require.ErrorIs(t, err, collective.ErrAborted, "rank %d", r)
				if r == culprit {
					assert.ErrorIs(t, err, collective.ErrInvalid)
					assert.ErrorContains(t, err, tc.want)
				} else {
					// The culprit's reason, or (when the notice loses the
					// race with the disconnection) that it was lost.
					assert.ErrorContains(t, err, fmt.Sprintf("rank %d", culprit), "rank %d", r)
				}
			}
			// The DataParallel stays failed.
			require.ErrorIs(t, dps[culprit].Sync(ctx), collective.ErrAborted)
		})
	}
}

// A Sync whose context ends while it waits aborts the communicator: the
// rank returns the cause, and a peer that never joined fails its next call.
func TestSyncAbandonedByItsContextAbortsEveryRank(t *testing.T) {
	comms := local(t, 2)
	lists := [][]*parallel.Param{params("a", 5), params("a", 5)}
	dps := newDP(t, comms, lists, parallel.DataParallelOptions{})
	cctx, cancel := context.WithCancelCause(ctx)
	done := make(chan error, 1)
	go func() { done <- dps[0].Sync(cctx) }() // rank 1 does not come
	cancel(errors.New("the step was abandoned"))
	err := <-done
	require.ErrorContains(t, err, "the step was abandoned")
	require.ErrorIs(t, err, collective.ErrAborted)
	err = dps[1].Sync(ctx)
	require.ErrorIs(t, err, collective.ErrAborted)
	require.ErrorContains(t, err, "rank 0")
}

func TestClosedDataParallelRefusesSync(t *testing.T) {
	dp := newDP(t, local(t, 1), [][]*parallel.Param{params("a", 2)}, parallel.DataParallelOptions{})[0]
	require.NoError(t, dp.Close())
	require.NoError(t, dp.Close())
	require.ErrorIs(t, dp.Sync(ctx), collective.ErrClosed)
}

// Closing a DataParallel in the middle of a step (Ready called, Sync not)
// abandons the step: the other ranks fail instead of waiting for it.
func TestCloseInTheMiddleOfAStepAbortsEveryRank(t *testing.T) {
	const n = 3
	comms := local(t, n)
	lists := [][]*parallel.Param{params("a", 5), params("a", 5), params("a", 5)}
	dps := newDP(t, comms, lists, parallel.DataParallelOptions{})
	dps[0].Ready(lists[0][0]) // starts the only bucket
	require.NoError(t, dps[0].Close())
	for r := 1; r < n; r++ {
		require.ErrorIs(t, dps[r].Sync(ctx), collective.ErrAborted, "rank %d", r)
	}
}
