package shard_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/shard"
)

// variant is one FSDP configuration of the equivalence tests.
type variant struct {
	name string
	opts shard.Options
	run  fsdpRun
}

// variants lists, for n ranks, every strategy, with the prefetch settings
// and the hook orders that change what is in flight when: none of them may
// change a bit of the result.
func variants(n int) []variant {
	var vs []variant
	add := func(name string, o shard.Options, keepLast bool) {
		vs = append(vs, variant{name: name, opts: o, run: fsdpRun{keepLast: keepLast}})
	}
	add("full", shard.Options{Strategy: shard.FullShard}, false)
	add("full/keep-last", shard.Options{Strategy: shard.FullShard}, true)
	add("full/no-prefetch", shard.Options{Strategy: shard.FullShard, Prefetch: -1}, false)
	add("full/prefetch-2", shard.Options{Strategy: shard.FullShard, Prefetch: 2}, true)
	add("full/prefetch-2-max-2", shard.Options{Strategy: shard.FullShard, Prefetch: 2, MaxGathered: 2}, false)
	add("full/max-1", shard.Options{Strategy: shard.FullShard, MaxGathered: 1}, true)
	add("grad", shard.Options{Strategy: shard.ShardGradOp}, false)
	add("grad/keep-last", shard.Options{Strategy: shard.ShardGradOp}, true)
	add("optim", shard.Options{Strategy: shard.ShardOptimizer}, false)
	add("none", shard.Options{Strategy: shard.NoShard}, true)
	for g := 1; g <= n; g++ {
		if n%g == 0 {
			add(fmt.Sprintf("hybrid/group-%d", g), shard.Options{Strategy: shard.Hybrid, GroupSize: g}, g%2 == 0)
		}
	}
	return vs
}

// TestBitwiseEqualToDataParallel: with exactly representable gradients
// (integers, multiples of N: every partial sum of either reduction is
// exact), every strategy ends 10 steps of SGD with momentum, of Adam and of
// AdamW with the same parameters as parallel.DataParallel, bit for bit, on 1 to
// 5 ranks (and 6, for Hybrid's groups of 2 and 3), with units that N does
// not divide and units smaller than N; and every forward saw the same
// gathered parameters.
func TestBitwiseEqualToDataParallel(t *testing.T) {
	leakCheck(t)
	const steps = 10
	for n := 1; n <= 6; n++ {
		for _, opt := range []struct {
			name string
			make optimizer
		}{{"sgd", sgd}, {"adam", adam}, {"adamw", adamw}} {
			want := make([]result, n)
			onRanks(t, n, func(c *collective.Comm) (err error) {
				want[c.Rank()], err = trainDDP(c, oddLayout, opt.make, steps, 1)
				return err
			})
			for _, v := range variants(n) {
				if n == 6 && v.opts.Strategy != shard.Hybrid {
					continue
				}
				t.Run(fmt.Sprintf("n=%d/%s/%s", n, opt.name, v.name), func(t *testing.T) {
					got := make([]result, n)
					onRanks(t, n, func(c *collective.Comm) error {
						units := oddLayout.model()
						fs, err := shard.New(ctx, c, units, v.opts)
						if err != nil {
							return err
						}
						defer fs.Close()
						run := v.run
						run.steps, run.micro = steps, 1
						got[c.Rank()], err = trainFSDP(fs, units, opt.make(), run)
						return err
					})
					for r := range n {
						requireBitwise(t, want[r], got[r], "rank %d", r)
					}
				})
			}
		}
	}
}

// TestAccumulationWithoutSyncEqualsDataParallel: 3 micro-batches per step,
// the first two with gradient synchronisation off, end bitwise where
// DataParallel's NoSync ends.
func TestAccumulationWithoutSyncEqualsDataParallel(t *testing.T) {
	leakCheck(t)
	const steps, micro = 4, 3
	for _, n := range []int{1, 3, 4} {
		want := make([]result, n)
		onRanks(t, n, func(c *collective.Comm) (err error) {
			want[c.Rank()], err = trainDDP(c, oddLayout, adam, steps, micro)
			return err
		})
		for _, v := range variants(n) {
			t.Run(fmt.Sprintf("n=%d/%s", n, v.name), func(t *testing.T) {
				got := make([]result, n)
				mem := make([]shard.Memory, n)
				onRanks(t, n, func(c *collective.Comm) error {
					units := oddLayout.model()
					fs, err := shard.New(ctx, c, units, v.opts)
					if err != nil {
						return err
					}
					defer fs.Close()
					run := v.run
					run.steps, run.micro = steps, micro
					got[c.Rank()], err = trainFSDP(fs, units, adam(), run)
					mem[c.Rank()] = fs.Memory()
					return err
				})
				for r := range n {
					requireBitwise(t, want[r], got[r], "rank %d", r)
					if v.opts.Strategy == shard.FullShard || v.opts.Strategy == shard.ShardGradOp || v.opts.Strategy == shard.Hybrid {
						require.Greater(t, mem[r].Accumulation, int64(0), "the full gradients were kept")
					} else {
						require.Zero(t, mem[r].Accumulation, "the full gradients are kept anyway")
					}
				}
			})
		}
	}
}
