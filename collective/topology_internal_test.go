package collective

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/shm"
)

func identity(r int) int { return r }

func TestTopology(t *testing.T) {
	// World hosts: 7, 3, 7, 7, 3 (any numbering): two hosts, first-rank order.
	hosts := []int{7, 3, 7, 7, 3}
	want := []struct {
		localRank, localSize int
		localRanks           []int
	}{{0, 3, []int{0, 2, 3}}, {0, 2, []int{1, 4}}, {1, 3, []int{0, 2, 3}}, {2, 3, []int{0, 2, 3}}, {1, 2, []int{1, 4}}}
	for r, w := range want {
		top := newTopology(r, len(hosts), identity, hosts)
		assert.Equal(t, []int{0, 1, 0, 0, 1}, top.host)
		assert.Equal(t, 2, top.hosts)
		assert.Equal(t, w.localRank, top.localRank, "rank %d", r)
		assert.Equal(t, w.localSize, top.localSize(), "rank %d", r)
		assert.Equal(t, w.localRanks, top.localRanks, "rank %d", r)
		assert.False(t, top.uniform)
		assert.False(t, top.hierarchical())
		assert.Equal(t, 3, top.maxLocal())
	}
	// A sub-communicator of world ranks 4, 0, 2 (in that order).
	sub := []int{4, 0, 2}
	top := newTopology(1, 3, func(r int) int { return sub[r] }, hosts)
	assert.Equal(t, []int{0, 1, 1}, top.host)
	assert.Equal(t, 0, top.localRank)
	assert.Equal(t, 2, top.localSize())

	// Uniform, interleaved: the cross ring of a rank is its local rank on
	// every host, in host order.
	inter := []int{0, 1, 2, 0, 1, 2}
	for r := range inter {
		top := newTopology(r, 6, identity, inter)
		require.True(t, top.hierarchical())
		assert.Equal(t, r/3, top.localRank)
		assert.Equal(t, []int{r % 3, r%3 + 3}, top.localRanks)
		lr := r / 3
		assert.Equal(t, []int{lr * 3, lr*3 + 1, lr*3 + 2}, top.crossRanks, "rank %d", r)
	}
	// One host, or one rank per host: nothing hierarchical about it.
	one, apart := newTopology(2, 3, identity, nil), newTopology(0, 3, identity, []int{0, 1, 2})
	assert.False(t, one.hierarchical())
	assert.Equal(t, 3, one.localSize())
	assert.False(t, apart.hierarchical())
	assert.Equal(t, []int{0, 1, 2, 2}, hostsOf([]string{"a", "b", "c", "c"}))
}

// flatCost is the same on every rank: it depends on the topology only.
func TestFlatCostIsTheSlowestKindTheTopologyHas(t *testing.T) {
	p := &placement{local: shm.LinkCost(), remote: transport.NewTCPNetwork(nil).Cost()}
	one := newTopology(0, 2, identity, []int{0, 0})
	apart := newTopology(0, 2, identity, []int{0, 1})
	mixed := newTopology(0, 3, identity, []int{0, 1, 1}) // rank 0 has no local peer, rank 1 does
	assert.Equal(t, p.local, one.flatCost(p))
	assert.Equal(t, p.remote, apart.flatCost(p))
	assert.Equal(t, p.local.Max(p.remote), mixed.flatCost(p))
	other := newTopology(1, 3, identity, []int{0, 1, 1})
	assert.Equal(t, mixed.flatCost(p), other.flatCost(p))
}

func TestHierarchicalCostFormula(t *testing.T) {
	unit := costModel{Alpha: 1, Beta: 1, Gamma: 1, Duplex: 1}
	zero := costModel{Duplex: 1}
	const n = 1 << 20
	// 2 hosts of 2: within, 2 rounds, n wire, n/2 reduced; between, 2
	// rounds, n wire (both ranks' halves through one interface), n/4
	// reduced.
	assert.InDelta(t, 2+n+n/2, hierAllReduceSeconds(unit, zero, 2, 2, n), 1e-6)
	assert.InDelta(t, 2+n+n/4, hierAllReduceSeconds(zero, unit, 2, 2, n), 1e-6)
	// 4 hosts of 2 between: 6 rounds, 1.5n wire, 0.75n/2 reduced.
	assert.InDelta(t, 6+1.5*n+0.375*n, hierAllReduceSeconds(zero, unit, 2, 4, n), 1e-6)
}

// The chooser takes the hierarchical AllReduce where it is cheapest, and
// only where it applies; forced where it does not, the ring runs.
func TestChooserTakesHierarchicalWhereItPays(t *testing.T) {
	local, remote := modelOf(shm.LinkCost()), modelOf(transport.NewTCPNetwork(nil).Cost())
	flat := modelOf(shm.LinkCost().Max(transport.NewTCPNetwork(nil).Cost()))
	comm := func(hosts []int, algo algorithm) *Comm {
		return &Comm{size: len(hosts), model: flat, local: local, remote: remote, algo: algo, topo: newTopology(0, len(hosts), identity, hosts)}
	}
	for _, hosts := range [][]int{{0, 0, 1, 1}, {0, 0, 0, 0, 1, 1, 1, 1}, {0, 1, 0, 1, 0, 1}} {
		c := comm(hosts, algoAuto)
		L, H := c.topo.localSize(), c.topo.hosts
		for _, bytes := range chooserSizes {
			best := flat.bestAllReduce(len(hosts), bytes)
			want := best
			if hierAllReduceSeconds(local, remote, L, H, bytes) < flat.seconds(flat.allReduceCost(best, len(hosts), bytes)) {
				want = algoHier
			}
			require.Equal(t, want, c.allReduceAlgorithm(bytes), "hosts %v, %d bytes", hosts, bytes)
		}
		assert.Equal(t, algoHier, c.allReduceAlgorithm(64<<20), "hosts %v: 64 MiB", hosts)
		assert.Equal(t, algoHier, comm(hosts, algoHier).allReduceAlgorithm(8))
	}
	assert.Equal(t, algoRing, comm([]int{0, 0, 0, 1}, algoHier).allReduceAlgorithm(64<<20), "hosts of different sizes")
	assert.Equal(t, algoRing, comm([]int{0, 0, 0, 0}, algoHier).allReduceAlgorithm(64<<20), "one host")
	assert.NotEqual(t, algoHier, comm([]int{0, 0, 0, 1}, algoAuto).allReduceAlgorithm(64<<20))
}

// A launcher's local rank that disagrees with the ranks found on the host
// is logged, naming the variable and both numbers; one that agrees is not.
func TestLauncherLocalRankIsCrossChecked(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	top := newTopology(2, 4, identity, []int{0, 0, 1, 1})
	checkLauncher(localRankHint{"LOCAL_RANK", 0}, &top, log)
	assert.Empty(t, logs.String())
	checkLauncher(localRankHint{}, &top, log)
	assert.Empty(t, logs.String())
	checkLauncher(localRankHint{"SLURM_LOCALID", 2}, &top, log)
	assert.Contains(t, logs.String(), "SLURM_LOCALID=2")
	assert.Contains(t, logs.String(), "local rank 0 of the 2 ranks on its host")
}

// Broadcast and AllGather take their hierarchical schedules where the
// model prices them lower: a small Broadcast (one slow latency instead of
// two), a large AllGather (a third fewer bytes through each host's
// interface on 2 hosts of 2), not a large Broadcast (the flat chain is
// pipelined, the two trees are not).
func TestChooserTakesHierarchicalBroadcastAndAllGather(t *testing.T) {
	local, remote := modelOf(shm.LinkCost()), modelOf(transport.NewTCPNetwork(nil).Cost())
	flat := modelOf(shm.LinkCost().Max(transport.NewTCPNetwork(nil).Cost()))
	comm := func(hosts []int, algo algorithm) *Comm {
		return &Comm{size: len(hosts), model: flat, local: local, remote: remote, algo: algo, topo: newTopology(0, len(hosts), identity, hosts)}
	}
	for _, hosts := range [][]int{{0, 0, 1, 1}, {0, 0, 0, 0, 1, 1, 1, 1}, {0, 1, 2, 0, 1, 2}} {
		c := comm(hosts, algoAuto)
		L, H, N := c.topo.localSize(), c.topo.hosts, len(hosts)
		for _, bytes := range chooserSizes {
			best := flat.bestBroadcast(N, bytes)
			want := best
			if hierBroadcastSeconds(local, remote, L, H, bytes) < flat.seconds(flat.broadcastCost(best, N, bytes)) {
				want = algoHier
			}
			require.Equal(t, want, c.broadcastAlgorithm(bytes), "hosts %v: Broadcast of %d bytes", hosts, bytes)
			want = algoRing
			if hierAllGatherSeconds(local, remote, L, H, bytes) < flat.seconds(allGatherCost(N, bytes)) {
				want = algoHier
			}
			require.Equal(t, want, c.allGatherAlgorithm(bytes), "hosts %v: AllGather of %d bytes", hosts, bytes)
		}
		assert.Equal(t, algoHier, c.broadcastAlgorithm(8), "hosts %v", hosts)
		assert.Equal(t, algoRing, c.broadcastAlgorithm(1<<30), "hosts %v", hosts)
		assert.Equal(t, algoHier, c.allGatherAlgorithm(64<<20), "hosts %v", hosts)
		assert.Equal(t, algoHier, comm(hosts, algoHier).broadcastAlgorithm(1<<30))
		assert.Equal(t, algoRing, comm(hosts, algoRing).allGatherAlgorithm(64<<20))
	}
	for _, flatHosts := range [][]int{{0, 0, 0, 1}, {0, 0, 0}} {
		c := comm(flatHosts, algoHier)
		assert.NotEqual(t, algoHier, c.broadcastAlgorithm(8), "hosts %v", flatHosts)
		assert.Equal(t, algoRing, c.allGatherAlgorithm(64<<20), "hosts %v", flatHosts)
	}
}
