package shard

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Strategy says what each rank keeps of a unit's parameters, gradients and
// optimizer state, in PyTorch FSDP's terms (ZeRO's stage in brackets).
type Strategy uint8

const (
	// FullShard (ZeRO-3) shards parameters, gradients and optimizer state:
	// a unit's full parameters exist only between Gather and Release.
	FullShard Strategy = iota
	// ShardGradOp (ZeRO-2) keeps every unit's parameters full once gathered
	// in forward (until the next Step changes them) and shards gradients
	// and optimizer state.
	ShardGradOp
	// ShardOptimizer (ZeRO-1) keeps parameters and gradients full and
	// shards only the optimizer state: gradients are reduce-scattered, each
	// rank updates its shard, and the updated shards are all-gathered.
	ShardOptimizer
	// NoShard keeps everything full on every rank and all-reduces the
	// gradients, as parallel.DataParallel does.
	NoShard
	// Hybrid is FullShard within a group of Options.GroupSize consecutive
	// ranks (for example one host's), replicated across the groups:
	// gradients are reduce-scattered within the group, then all-reduced
	// across groups between the ranks that hold the same shard (HSDP).
	Hybrid
)

var strategyNames = [...]string{"FullShard", "ShardGradOp", "ShardOptimizer", "NoShard", "Hybrid"}

func (s Strategy) String() string {
	if int(s) < len(strategyNames) {
		return strategyNames[s]
	}
	return fmt.Sprintf("Strategy(%d)", uint8(s))
}

// ParseStrategy reads a strategy by its short name (full, grad, optim,
// none, hybrid), its Go name (FullShard ...) or PyTorch's (FULL_SHARD,
// SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD), in any case.
func ParseStrategy(name string) (Strategy, error) {
	switch strings.ToLower(strings.ReplaceAll(name, "_", "")) {
	case "full", "fullshard", "zero3":
		return FullShard, nil
	case "grad", "shardgradop", "zero2":
		return ShardGradOp, nil
	case "optim", "optimizer", "shardoptimizer", "zero1":
		return ShardOptimizer, nil
	case "none", "noshard", "ddp":
		return NoShard, nil
	case "hybrid", "hybridshard", "hsdp":
		return Hybrid, nil
	}
	return 0, fmt.Errorf("shard: unknown strategy %q (want full, grad, optim, none or hybrid)", name)
}

// shardsParams: a unit's parameters live as a shard, gathered into a
// bounded set of buffers when used.
func (s Strategy) shardsParams() bool { return s == FullShard || s == Hybrid }

// shardsGrads: a unit's full gradient is transient; what persists is this
// rank's reduced shard.
func (s Strategy) shardsGrads() bool { return s == FullShard || s == ShardGradOp || s == Hybrid }

// regathers: the parameters are kept full, and after a Step each rank's
// updated shard must be all-gathered into them.
func (s Strategy) regathers() bool { return s == ShardGradOp || s == ShardOptimizer }

// DefaultPrefetch is the number of units gathered ahead when
// Options.Prefetch is zero.
const DefaultPrefetch = 1

// Options tune an FSDP. Every rank must pass the same options: New checks
// that they do.
type Options struct {
	Strategy Strategy
	// Prefetch is how many units after the one being gathered (the next
	// ones in forward, the previous ones in backward) have their gather
	// started early, so that communication overlaps computation. Zero means
	// DefaultPrefetch; negative means none. It applies to the strategies
	// that gather (FullShard, Hybrid); the others gather every unit right
	// after Step.
	Prefetch int
	// MaxGathered bounds how many units' full parameters exist at once
	// under FullShard and Hybrid (PyTorch's limit_all_gathers): New
	// allocates that many gather buffers and no more, so peak memory is
	// known (see Memory). Zero means Prefetch+1, the least that lets every
	// prefetch run; a smaller bound delays prefetches until a Release
	// frees a buffer.
	MaxGathered int
	// GroupSize is, under Hybrid, the number of consecutive ranks that
	// shard the units among themselves: ranks [g·GroupSize, (g+1)·GroupSize)
	// form group g, and each group holds a full replica. It must divide the
	// communicator's size. Zero makes each host a group, as the
	// communicator sees its hosts (Comm.LocalSize), so that the gathers
	// stay within hosts: every host must then run the same number of
	// ranks, numbered consecutively (launchers number them so), or New
	// fails on every rank saying which host differs. Other strategies
	// ignore it.
	GroupSize int
}

// LocalGroupSize is the number of ranks this process's launcher started on
// this host, from the environment (RINGO_LOCAL_WORLD_SIZE, set by ringrun;
// torchrun's LOCAL_WORLD_SIZE; OpenMPI's OMPI_COMM_WORLD_LOCAL_SIZE), or 0
// when none says.
//
// Deprecated: leave Options.GroupSize zero: Hybrid then groups the ranks
// of each host as the communicator finds them (Comm.LocalSize), checked
// on every rank, where the launcher's word may not match how the ranks
// actually share hosts.
func LocalGroupSize() int {
	for _, v := range []string{"RINGO_LOCAL_WORLD_SIZE", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"} {
		if n, err := strconv.Atoi(os.Getenv(v)); err == nil && n > 0 {
			return n
		}
	}
	return 0
}

// normalize fills in the defaults and checks o on its own, for a
// communicator of size ranks.
func (o Options) normalize(size int) (Options, error) {
	if int(o.Strategy) >= len(strategyNames) {
		return o, fmt.Errorf("unknown strategy %v", o.Strategy)
	}
	switch {
	case o.Prefetch == 0:
		o.Prefetch = DefaultPrefetch
	case o.Prefetch < 0:
		o.Prefetch = 0
	}
	if o.MaxGathered < 0 {
		return o, fmt.Errorf("MaxGathered %d is negative", o.MaxGathered)
	}
	if o.MaxGathered == 0 {
		o.MaxGathered = o.Prefetch + 1
	}
	switch {
	case o.Strategy != Hybrid:
		o.GroupSize = size
	case o.GroupSize == 0:
		// One host's ranks: agree finds how many, the same on every rank.
	case o.GroupSize < 0 || size%o.GroupSize != 0:
		return o, fmt.Errorf("Hybrid needs a GroupSize that divides the %d ranks, got %d (0 groups the ranks of each host)", size, o.GroupSize)
	}
	if !o.Strategy.shardsParams() {
		o.Prefetch, o.MaxGathered = 0, 0
	}
	return o, nil
}
