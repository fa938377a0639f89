package collective

import (
	"fmt"
	"unsafe"

	"github.com/ringo-ml/ringo/internal/algo/doubling"
	"github.com/ringo-ml/ringo/internal/algo/tree"
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/link"
	"github.com/ringo-ml/ringo/ring"
)

// algorithm names how a collective moves its data. It travels in the high
// nibble of the signature's op byte, so ranks that chose differently (a
// RINGO_ALGO set on some ranks only) fail with an error naming both.
type algorithm uint8

const (
	algoAuto algorithm = iota
	algoRing
	algoDoubling
	algoRabenseifner
	algoBidir
	algoHier
)

var algoNames = [...]string{"auto", "ring", "doubling", "rabenseifner", "bidir", "hier"}

func (a algorithm) String() string {
	if int(a) < len(algoNames) {
		return algoNames[a]
	}
	return fmt.Sprintf("algorithm(%d)", uint8(a))
}

func parseAlgorithm(s string) (algorithm, error) {
	switch normalName(s) {
	case "", "auto":
		return algoAuto, nil
	case "ring":
		return algoRing, nil
	case "doubling", "recursive-doubling":
		return algoDoubling, nil
	case "rabenseifner", "halving-doubling":
		return algoRabenseifner, nil
	case "bidir", "bidirectional":
		return algoBidir, nil
	case "hier", "hierarchical":
		return algoHier, nil
	}
	return algoAuto, invalidf("unknown algorithm %q (want ring, bidir, doubling, rabenseifner, hier or auto)", s)
}

// allReduceAlgorithm picks the algorithm for a vector of the given size:
// the one forced by Config.Algorithm (RINGO_ALGO), else the cheapest of
// ring, doubling and rabenseifner in the communicator's cost model
// (costmodel.go), whose constants its transport gives.
//
// The model replaced a hand-set threshold (doubling up to 512 KiB on up to 4
// ranks) drawn from this measurement on the 2-CPU development machine
// (2026-11-23), median us per call of
//
//	RINGO_ALGO=ring|doubling ringrun -np N -x RINGO_ALGO -- examples/allreduce -sizes ...
//
//	N=2   4 B   16 KiB  256 KiB  512 KiB  1 MiB  2 MiB
//	ring  41    89      326-436  475      1143   1814
//	dbl   55    52      161-183  357      1326   1989
//	N=4   4 B   16 KiB  256 KiB  512 KiB  1 MiB  2 MiB
//	ring  348   674     1969-2983 3065    3209   10200
//	dbl   266   310     870-1302  1510    4270   8041
//
// The model agrees on doubling for small vectors. Its crossovers (2026-11-23
// fit): 2 ranks doubling below 1 MiB, then the ring; 3, 5, 6 and 7 ranks
// the ring from 32-256 KiB (the fold makes doubling and Rabenseifner pay the
// whole vector twice more); 4 and 8 ranks Rabenseifner from 128-256 KiB, the
// ring from 16-32 MiB (where Rabenseifner's 4 MiB frames go in lockstep).
//
// With several hosts of several ranks each, the hierarchical schedule
// (hier.go) is a candidate too, priced with the links within a host and
// between hosts apart. Forced on a communicator where it does not apply
// (one host, one rank per host, hosts with different numbers of ranks),
// "hier" runs the ring, which is what it would amount to.
func (c *Comm) allReduceAlgorithm(bytes int) algorithm {
	switch {
	case c.size == 1:
		return algoRing
	case c.algo == algoHier && !c.topo.hierarchical():
		return algoRing
	case c.algo != algoAuto:
		return c.algo
	}
	best := c.model.bestAllReduce(c.size, bytes)
	if c.topo.hierarchical() && hierAllReduceSeconds(c.local, c.remote, c.topo.localSize(), c.topo.hosts, bytes) <
		c.model.seconds(c.model.allReduceCost(best, c.size, bytes)) {
		return algoHier
	}
	return best
}

// bitsLen is ceil(log2(n+1)): the rounds of recursive doubling for n+1 ranks.
func bitsLen(n int) int {
	b := 0
	for ; n > 0; n >>= 1 {
		b++
	}
	return b
}

// allReduce runs the chosen algorithm (begin has been called).
func allReduce[T Elem](c *Comm, algo algorithm, buf []T, red link.Reducer[T]) error {
	switch algo {
	case algoBidir:
		return ring.AllReduceBidirectional(c.ring, c.ringRev, buf, red)
	case algoDoubling:
		return doubling.AllReduce(c.rank, c.size, c.peers, buf, scratchOf[T](c, doubling.ScratchLen[T](len(buf))), red)
	case algoRabenseifner:
		return doubling.Rabenseifner(c.rank, c.size, c.peers, buf, scratchOf[T](c, len(buf)), red)
	case algoHier:
		return hierAllReduce(c, buf, red)
	}
	return ring.AllReduce(c.ring, buf, red)
}

// broadcastTree runs the binomial-tree broadcast (begin has been called).
func broadcastTree[T Elem](c *Comm, buf []T, root int) error {
	return tree.Broadcast(c.rank, c.size, root, c.peers, buf)
}

// scratchOf returns scratch space for n elements of T, grown (once) as needed.
func scratchOf[T Elem](c *Comm, n int) []T { return grow[T](&c.scratch, n) }

// grow returns *buf as n elements of T, growing it first if it is short.
func grow[T Elem](buf *[]uint64, n int) []T {
	bytes := n * kernel.Size[T]()
	if len(*buf)*8 < bytes {
		*buf = make([]uint64, (bytes+7)/8)
	}
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*T)(unsafe.Pointer(&(*buf)[0])), n)
}

// broadcastAlgorithm picks the Broadcast schedule: algoDoubling is the
// binomial tree, algoRing the ring's chain, algoHier a tree across hosts
// and then one within each (hier.go). "doubling" forces the tree, "ring"
// and "bidir" the chain, "hier" the hierarchical trees where they apply;
// otherwise the cost model chooses (there is no Rabenseifner broadcast:
// "rabenseifner" leaves it to the model too).
func (c *Comm) broadcastAlgorithm(bytes int) algorithm {
	switch {
	case c.size == 1:
		return algoRing
	case c.algo == algoDoubling || c.algo == algoRing:
		return c.algo
	case c.algo == algoBidir:
		return algoRing
	case c.algo == algoHier && c.topo.hierarchical():
		return algoHier
	}
	best := c.model.bestBroadcast(c.size, bytes)
	if c.algo == algoAuto && c.topo.hierarchical() && hierBroadcastSeconds(c.local, c.remote, c.topo.localSize(), c.topo.hosts, bytes) <
		c.model.seconds(c.model.broadcastCost(best, c.size, bytes)) {
		return algoHier
	}
	return best
}

// allGatherAlgorithm picks the AllGather schedule for bytes in all (recv):
// the ring, or where hosts hold several ranks each the hierarchical rings
// (hier.go), whichever the model prices lower; "hier" forces the latter
// where it applies, any other forced algorithm the ring.
func (c *Comm) allGatherAlgorithm(bytes int) algorithm {
	switch {
	case !c.topo.hierarchical():
		return algoRing
	case c.algo == algoHier:
		return algoHier
	case c.algo != algoAuto:
		return algoRing
	}
	if hierAllGatherSeconds(c.local, c.remote, c.topo.localSize(), c.topo.hosts, bytes) < c.model.seconds(allGatherCost(c.size, bytes)) {
		return algoHier
	}
	return algoRing
}
