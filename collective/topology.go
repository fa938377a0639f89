package collective

import (
	"fmt"
	"log/slog"

	"github.com/ringo-ml/ringo/transport"
)

// placement is where a job's ranks run: the host of every world rank, and
// what the links within a host and between hosts cost. Every communicator
// made from a world shares the world's.
type placement struct {
	// host numbers the hosts, by world rank, in the order of their first
	// rank (nil: every rank on one host).
	host []int
	// local and remote are the costs of a link between two ranks of one
	// host and between two hosts (shared memory and TCP, say).
	local, remote transport.Cost
}

// onePlace is the placement of a job whose ranks share one host and one
// kind of link.
func onePlace(cost transport.Cost) *placement {
	return &placement{local: cost, remote: cost}
}

// hostsOf numbers the hosts named by keys (one per rank) in the order of
// their first rank.
func hostsOf(keys []string) []int {
	index := map[string]int{}
	host := make([]int, len(keys))
	for r, k := range keys {
		h, ok := index[k]
		if !ok {
			h = len(index)
			index[k] = h
		}
		host[r] = h
	}
	return host
}

// topology is one communicator's view of where its ranks run.
type topology struct {
	host      []int // by rank: the host's number, in the order of its first rank
	hosts     int
	hostIndex int // this rank's host
	// localRanks are the ranks on this rank's host, ascending; localRank
	// is this rank's place among them.
	localRanks []int
	localRank  int
	// hostRanks are every host's ranks, ascending; localIndex, by rank,
	// each rank's place among its host's.
	hostRanks  [][]int
	localIndex []int
	// uniform: every host has len(localRanks) ranks. Then crossRanks are,
	// by host, the ranks with this rank's local rank: the ring of the
	// hierarchical schedules' step between hosts.
	uniform    bool
	crossRanks []int
}

// newTopology is the topology of rank among ranks whose hosts are
// worldHost[worldRank(r)] (nil worldHost: all one host).
func newTopology(rank, size int, worldRank func(int) int, worldHost []int) topology {
	t := topology{host: make([]int, size)}
	numbered := map[int]int{}
	for r := range size {
		wh := 0
		if worldHost != nil {
			wh = worldHost[worldRank(r)]
		}
		h, ok := numbered[wh]
		if !ok {
			h = len(numbered)
			numbered[wh] = h
		}
		t.host[r] = h
	}
	t.hosts = max(1, len(numbered))
	t.hostIndex = t.host[rank]
	count := make([]int, t.hosts)
	local := make([][]int, t.hosts) // by host, its ranks ascending
	t.localIndex = make([]int, size)
	for r, h := range t.host {
		t.localIndex[r] = count[h]
		count[h]++
		local[h] = append(local[h], r)
	}
	t.localRank = t.localIndex[rank]
	t.hostRanks = local
	t.localRanks = local[t.hostIndex]
	t.uniform = true
	for _, n := range count {
		t.uniform = t.uniform && n == count[0]
	}
	if t.uniform {
		t.crossRanks = make([]int, t.hosts)
		for h := range t.hosts {
			t.crossRanks[h] = local[h][t.localRank]
		}
	}
	return t
}

// localSize is the number of ranks on this rank's host.
func (t *topology) localSize() int { return len(t.localRanks) }

// hierarchical reports whether the hierarchical schedules apply: several
// hosts, each with the same number of ranks, more than one.
func (t *topology) hierarchical() bool {
	return t.uniform && t.hosts > 1 && t.localSize() > 1
}

// maxLocal is the most ranks any host has.
func (t *topology) maxLocal() int {
	count := make([]int, t.hosts)
	m := 0
	for _, h := range t.host {
		count[h]++
		m = max(m, count[h])
	}
	return m
}

// flatCost is what the links of a communicator with this topology cost,
// for the algorithms that treat every link alike: the slowest kind it
// has, the same on every rank (it depends on the topology only, not on
// which links this rank happens to hold).
func (t *topology) flatCost(p *placement) transport.Cost {
	switch {
	case t.hosts == 1:
		return p.local
	case t.maxLocal() == 1:
		return p.remote
	}
	return p.local.Max(p.remote)
}

// LocalRank is this rank's index among the ranks of the communicator that
// run on its host, in rank order: 0 <= LocalRank() < LocalSize(). Ranks
// are on one host when they share memory (see Config.Host); in a
// sub-communicator, among its members.
func (c *Comm) LocalRank() int { return c.topo.localRank }

// LocalSize is the number of ranks of the communicator on this rank's
// host (1 when each rank has a host of its own).
func (c *Comm) LocalSize() int { return c.topo.localSize() }

// localRankHint is the local rank a launcher gave (variable is "" if none).
type localRankHint struct {
	variable string
	rank     int
}

// checkLauncher logs it when the launcher's local rank is not the one the
// ranks' hosts give: the launcher placed the ranks in another way than
// ringo sees them (a RINGO_HOST that splits a machine, ranks in different
// containers), and a program that picks a device by its launcher's local
// rank may not pick the one it means.
func checkLauncher(hint localRankHint, t *topology, log *slog.Logger) {
	if hint.variable == "" || hint.rank == t.localRank {
		return
	}
	log.Warn(fmt.Sprintf("ringo: %s=%d, but this rank is local rank %d of the %d ranks on its host (ranks share a host when they share memory: "+
		"the same boot id, IPC and network namespace, or the same RINGO_HOST); Comm.LocalRank reports %d",
		hint.variable, hint.rank, t.localRank, t.localSize(), t.localRank))
}
