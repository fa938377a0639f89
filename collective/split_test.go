package collective_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// closeLater closes a sub-communicator when the test ends.
func closeLater(t testing.TB, c *collective.Comm) {
	if c != nil {
		t.Cleanup(func() { _ = c.Close() })
	}
}

// checkSub checks that sub holds exactly the parent ranks want, in that
// order: its size and rank, an AllGather of parent ranks, and an AllReduce
// of odd length whose result only the members' inputs make.
func checkSub(t *testing.T, parent int, sub *collective.Comm, want []int) {
	t.Helper()
	require.NotNil(t, sub, "parent rank %d", parent)
	require.Equal(t, len(want), sub.Size())
	require.Equal(t, parent, want[sub.Rank()], "parent rank %d has sub rank %d", parent, sub.Rank())
	got := make([]int64, sub.Size())
	require.NoError(t, collective.AllGather(ctx, sub, []int64{int64(parent)}, got))
	for i, p := range want {
		require.Equal(t, int64(p), got[i], "sub rank %d", i)
	}
	const count = 13
	buf := make([]float64, count)
	for i := range buf {
		buf[i] = float64(parent*100 + i)
	}
	require.NoError(t, collective.AllReduce(ctx, sub, buf, collective.Sum))
	for i := range buf {
		exp := 0.0
		for _, p := range want {
			exp += float64(p*100 + i)
		}
		require.Equal(t, exp, buf[i], "element %d", i)
	}
}

// Split follows MPI_Comm_split: one communicator per color, ordered by key
// then parent rank; Undefined joins none. 1..8 ranks, three colorings.
func TestSplitGroupsRanksByColorOrderedByKey(t *testing.T) {
	colorings := map[string]func(r, n int) (color, key int){
		"parity, reversed":  func(r, n int) (int, int) { return r % 2, -r },
		"thirds, tied keys": func(r, n int) (int, int) { return r % 3, 0 },
		"all but last": func(r, n int) (int, int) {
			if r == n-1 {
				return collective.Undefined, 0
			}
			return 7, n - r
		},
	}
	for n := 1; n <= 8; n++ {
		for name, coloring := range colorings {
			t.Run(fmt.Sprintf("n=%d/%s", n, name), func(t *testing.T) {
				comms := local(t, n, collective.Config{})
				members := map[int][]int{}
				type ck struct{ key, rank int }
				keyed := map[int][]ck{}
				for r := range n {
					color, key := coloring(r, n)
					if color != collective.Undefined {
						keyed[color] = append(keyed[color], ck{key, r})
					}
				}
				for color, ms := range keyed {
					slices.SortStableFunc(ms, func(a, b ck) int { return a.key - b.key })
					for _, m := range ms {
						members[color] = append(members[color], m.rank)
					}
				}
				requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
					color, key := coloring(r, n)
					sub, err := c.Split(ctx, color, key)
					if err != nil {
						return err
					}
					closeLater(t, sub)
					if color == collective.Undefined {
						assert.Nil(t, sub)
						return nil
					}
					checkSub(t, r, sub, members[color])
					return nil
				}))
			})
		}
	}
}

// Group takes ranks in the order listed; the ranks not listed get nil.
func TestGroupTakesRanksInListOrder(t *testing.T) {
	comms := local(t, 5, collective.Config{})
	list := []int{3, 0, 4}
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		sub, err := c.Group(ctx, list)
		if err != nil {
			return err
		}
		closeLater(t, sub)
		if !slices.Contains(list, r) {
			assert.Nil(t, sub)
			return nil
		}
		checkSub(t, r, sub, list)
		return nil
	}))
}

// Wrong arguments to Group or Split fail on every rank, with ErrInvalid,
// and leave the parent usable.
func TestGroupAndSplitRefuseBadArgumentsOnEveryRank(t *testing.T) {
	cases := map[string]func(r int, c *collective.Comm) (*collective.Comm, error){
		"duplicate rank on one rank": func(r int, c *collective.Comm) (*collective.Comm, error) {
			if r == 2 {
				return c.Group(ctx, []int{1, 1})
			}
			return c.Group(ctx, []int{0, 1})
		},
		"rank out of range": func(r int, c *collective.Comm) (*collective.Comm, error) {
			return c.Group(ctx, []int{0, 4})
		},
		"different lists": func(r int, c *collective.Comm) (*collective.Comm, error) {
			if r == 1 {
				return c.Group(ctx, []int{1, 0})
			}
			return c.Group(ctx, []int{0, 1})
		},
		"negative color": func(r int, c *collective.Comm) (*collective.Comm, error) {
			return c.Split(ctx, -r, 0)
		},
	}
	for name, call := range cases {
		t.Run(name, func(t *testing.T) {
			comms := local(t, 4, collective.Config{})
			errs := each(comms, func(r int, c *collective.Comm) error {
				sub, err := call(r, c)
				closeLater(t, sub)
				return err
			})
			for r, err := range errs {
				require.ErrorIs(t, err, collective.ErrInvalid, "rank %d", r)
			}
			checkEveryCollective(t, comms)
		})
	}
}

// Split is a call on the parent like any other: a rank that calls
// something else at that point fails with ErrMismatch, and so do the others.
func TestSplitAgainstAnotherCallIsAMismatch(t *testing.T) {
	comms := local(t, 3, collective.Config{})
	errs := each(comms, func(r int, c *collective.Comm) error {
		if r == 1 {
			return collective.AllReduce(ctx, c, make([]int64, 3), collective.Sum)
		}
		sub, err := c.Split(ctx, 0, 0)
		closeLater(t, sub)
		return err
	})
	for r, err := range errs {
		require.ErrorIs(t, err, collective.ErrMismatch, "rank %d", r)
	}
}

// A parent and two sub-communicators (one a child of the other) in use at
// the same time from different goroutines, each rank starting them in its
// own order: every result is right, and none waits for another's frames.
func TestParentAndSubCommunicatorsRunConcurrently(t *testing.T) {
	for _, tr := range []struct {
		name string
		form func(t *testing.T, n int) []*collective.Comm
	}{
		{"mem", func(t *testing.T, n int) []*collective.Comm { return local(t, n, tinyPipeline) }},
		{"tcp", func(t *testing.T, n int) []*collective.Comm { return formTCP(t, n, tinyPipeline) }},
		{"mixed", func(t *testing.T, n int) []*collective.Comm { return formTwoHosts(t, n, tinyPipeline) }},
	} {
		t.Run(tr.name, func(t *testing.T) {
			const n, rounds = 6, 12
			comms := tr.form(t, n)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				half, err := c.Split(ctx, r%2, r)
				if err != nil {
					return err
				}
				defer half.Close()
				// The first two ranks of each half, made from the half.
				pair, err := half.Group(ctx, []int{0, 1})
				if err != nil {
					return err
				}
				if pair != nil {
					defer pair.Close()
				}
				loop := func(cm *collective.Comm, want func(i int) float64) error {
					for k := range rounds {
						buf := []float64{1, float64(k), float64(r)}
						if err := collective.AllReduce(ctx, cm, buf, collective.Sum); err != nil {
							return err
						}
						if buf[0] != float64(cm.Size()) || buf[1] != float64(k*cm.Size()) || buf[2] != want(0) {
							return fmt.Errorf("rank %d round %d: got %v", r, k, buf)
						}
					}
					return nil
				}
				sumOf := func(ranks []int) func(int) float64 {
					return func(int) float64 {
						s := 0.0
						for _, p := range ranks {
							s += float64(p)
						}
						return s
					}
				}
				var mine []int
				for p := r % 2; p < n; p += 2 {
					mine = append(mine, p)
				}
				jobs := []func() error{
					func() error { return loop(c, sumOf([]int{0, 1, 2, 3, 4, 5})) },
					func() error { return loop(half, sumOf(mine)) },
				}
				if pair != nil {
					jobs = append(jobs, func() error { return loop(pair, sumOf(mine[:2])) })
				}
				if r%3 == 1 { // start them in another order on some ranks
					slices.Reverse(jobs)
				}
				var wg sync.WaitGroup
				errs := make([]error, len(jobs))
				for i, job := range jobs {
					wg.Add(1)
					go func() { defer wg.Done(); errs[i] = job() }()
				}
				wg.Wait()
				return errors.Join(errs...)
			}))
		})
	}
}

// A child outlives its parent: closing the parent leaves it working.
func TestSubCommunicatorOutlivesItsParent(t *testing.T) {
	comms := formTCP(t, 3, collective.Config{})
	subs := make([]*collective.Comm, 3)
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		var err error
		subs[r], err = c.Split(ctx, 0, r)
		return err
	}))
	t.Cleanup(func() { closeAll(subs) })
	closeAll(comms)
	requireAllOK(t, each(subs, func(r int, c *collective.Comm) error {
		checkSub(t, r, c, []int{0, 1, 2})
		return nil
	}))
}

// Every secure transport makes sub-communicators the same way.
func TestSplitOverSecureTransports(t *testing.T) {
	for _, sc := range secureConfigs {
		t.Run(sc.name, func(t *testing.T) {
			cfg := sc.cfg
			cfg.Token, cfg.JobID = "s3cret", "split"
			comms := formTCP(t, 4, cfg)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				sub, err := c.Split(ctx, r/2, -r)
				if err != nil {
					return err
				}
				defer sub.Close()
				checkSub(t, r, sub, []int{r/2*2 + 1, r / 2 * 2})
				return nil
			}))
		})
	}
}

// A rank whose Split is cancelled while it connects the new communicator
// aborts the parent: the other members, connecting too, fail at once (not
// at their timeout) with an error that says which rank gave up and where,
// and so does the parent's next call on the ranks of other colors. Over mem, TCP and shared memory, a
// few rounds each; the hook cancels rank 0 once every rank is connecting.
func TestSplitCancelledWhileConnectingAbortsTheParent(t *testing.T) {
	for _, tr := range []string{"mem", "tcp", "shm"} {
		t.Run(tr, func(t *testing.T) {
			for round := range 3 {
				splitCancelledWhileConnecting(t, tr, round)
			}
		})
	}
}

func splitCancelledWhileConnecting(t *testing.T, tr string, round int) {
	const n = 4
	const timeout = time.Minute
	comms := formComms(t, tr, n, collective.Config{Timeout: timeout})
	defer closeAll(comms)
	ctx0, cancel := context.WithCancel(ctx)
	defer cancel()
	var arrived sync.WaitGroup
	arrived.Add(n)
	collective.SetSplitConnecting(func(parent *collective.Comm) {
		arrived.Done()
		if parent.Rank() == 0 {
			arrived.Wait()
			cancel()
		}
	})
	t.Cleanup(func() { collective.SetSplitConnecting(nil) })
	start := time.Now()
	errs := each(comms, func(r int, c *collective.Comm) error {
		cx := ctx
		if r == 0 {
			cx = ctx0
		}
		sub, err := c.Split(cx, r%2, r) // ranks 0 and 2; 1 and 3
		if sub != nil {
			_ = sub.Close()
		}
		return err
	})
	collective.SetSplitConnecting(nil)
	require.Less(t, time.Since(start), timeout/2, "round %d: the ranks waited for their timeout", round)
	require.ErrorIs(t, errs[0], context.Canceled, "round %d", round)
	const why = "rank 0 abandoned Split at op #1 while connecting the new communicator"
	for r, err := range errs {
		if r%2 == 1 {
			// Another color: its communicator is independent of rank 0's
			// and may have been made before the abort; the parent's next
			// call fails.
			if err == nil {
				err = collective.Barrier(ctx, comms[r])
			}
		}
		require.ErrorIs(t, err, collective.ErrAborted, "rank %d, round %d", r, round)
		require.ErrorContains(t, err, why, "rank %d, round %d", r, round)
	}
}
