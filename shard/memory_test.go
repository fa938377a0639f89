package shard_test

import (
	"errors"
	"fmt"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/shard"
)

// memoryModel is Ψ = 10,010,000 parameters in 10 units of a 1000×1000
// weight and a 1000-value bias, with no gradients of its own (FSDP makes
// them).
func memoryModel() [][]*parallel.Param {
	units := make([][]*parallel.Param, 10)
	for u := range units {
		units[u] = []*parallel.Param{
			{Name: fmt.Sprintf("fc%d.weight", u), Data: make([]float32, 1000*1000)},
			{Name: fmt.Sprintf("fc%d.bias", u), Data: make([]float32, 1000)},
		}
	}
	return units
}

const (
	psi         = 10 * (1000*1000 + 1000)
	largestUnit = 1000*1000 + 1000
)

// zeroFormula is ZeRO's bytes per rank for Ψ parameters with Adam (4 bytes
// each of parameter and gradient, 8 of state) over n ranks, without the
// transient buffers.
func zeroFormula(st shard.Strategy, n int) float64 {
	p := float64(psi)
	switch st {
	case shard.NoShard:
		return 16 * p
	case shard.ShardOptimizer:
		return 8*p + 8*p/float64(n)
	case shard.ShardGradOp:
		return 4*p + 12*p/float64(n)
	}
	return 16 * p / float64(n)
}

// TestMemoryMatchesZeROFormulas: for Ψ ≈ 10M parameters with Adam on 1, 2
// and 4 ranks, what each strategy holds per rank (Memory's accounting of
// parameters, gradients and optimizer state) is within 1% of ZeRO's
// formula (only the padding of units to a multiple of N differs), the
// transient buffers are exactly the documented bound, and the Go heap
// grew by what the accounting says (within 10%, plus the communicators'
// fixed pipeline scratch).
func TestMemoryMatchesZeROFormulas(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("allocates up to 1 GB")
	}
	leakCheck(t)
	type config struct {
		st    shard.Strategy
		group int
	}
	for _, n := range []int{1, 2, 4} {
		configs := []config{{shard.NoShard, 0}, {shard.ShardOptimizer, 0}, {shard.ShardGradOp, 0}, {shard.FullShard, 0}}
		if n > 1 {
			configs = append(configs, config{shard.Hybrid, n / 2})
		}
		for _, c := range configs {
			t.Run(fmt.Sprintf("n=%d/%v", n, c.st), func(t *testing.T) {
				opts := shard.Options{Strategy: c.st, GroupSize: c.group}
				mems := make([]shard.Memory, n)
				var heap int64
				runtime.GC()
				before := heapInUse()
				comms, err := localComms(n)
				require.NoError(t, err)
				j := &job{comms: comms, fss: make([]*shard.FSDP, n)}
				require.NoError(t, errors.Join(j.all(func(r int) (err error) {
					if j.fss[r], err = shard.New(ctx, comms[r], memoryModel(), opts); err != nil {
						return err
					}
					if err := j.fss[r].Step(ctx, adam()); err != nil { // allocates the state
						return err
					}
					mems[r] = j.fss[r].Memory()
					return nil
				})...))
				runtime.GC()
				heap = heapInUse() - before
				for r := range n {
					j.fss[r].Close()
					comms[r].Close()
				}
				var total int64
				for _, m := range mems {
					total += m.Total()
				}
				m := mems[0]
				shards := n
				if c.st == shard.Hybrid {
					shards = c.group
				}
				want := zeroFormula(c.st, shards)
				held := float64(m.Params + m.Grads + m.OptimizerState)
				t.Logf("per rank: params %.1f MB, grads %.1f MB, state %.1f MB, buffers %.1f MB; formula %.1f MB (%.3f%% off); heap grew %.1f MB for %.1f MB accounted",
					mb(m.Params), mb(m.Grads), mb(m.OptimizerState), mb(m.Buffers), want/1e6, 100*(held-want)/want, float64(heap)/1e6, float64(total)/1e6)
				require.InEpsilon(t, want, held, 0.01)
				var buffers int64
				switch c.st {
				case shard.FullShard, shard.Hybrid:
					padded := (largestUnit + shards - 1) / shards * shards
					buffers = int64(2 * 8 * padded) // Prefetch 1: 2 gather buffers of parameters and gradients
				case shard.ShardGradOp:
					buffers = int64(2 * 4 * largestUnit) // 2 full-gradient buffers
				}
				require.Equal(t, buffers, m.Buffers)
				// Besides what FSDP holds, each communicator a rank uses keeps
				// its ring's pipeline scratch (3 MiB with the defaults): the
				// caller's and FSDP's private one, and under Hybrid a third.
				perRank := int64(2)
				if c.st == shard.Hybrid {
					perRank = 3
				}
				require.GreaterOrEqual(t, heap, total, "the accounting counts nothing that was not allocated")
				require.LessOrEqual(t, heap, total+total/10+int64(n)*perRank*4<<20, "the accounting covers what was allocated")
			})
		}
	}
}

func mb(b int64) float64 { return float64(b) / 1e6 }

func heapInUse() int64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
