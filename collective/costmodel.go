package collective

import (
	"math"
	"time"

	"github.com/ringo-ml/ringo/internal/xfer"
	"github.com/ringo-ml/ringo/ring"
	"github.com/ringo-ml/ringo/transport"
)

// costModel is the alpha-beta(-gamma) model of a collective's time, as a
// communicator holds it (Comm.model: its transport's constants):
//
//	time = rounds·Alpha + wire·Beta + reduced·Gamma
//
// rounds is the number of message latencies on the critical path, wire the
// bytes one rank sends on it (each send overlaps the matching receive) and
// reduced the bytes one rank reduces on it. Per algorithm, for n bytes on N
// ranks, p2 the largest power of two not above N, L = log2 p2 and f = 1 if
// N is not a power of two (then the fold: the extra ranks hand their vector
// to a partner first and get the result back last, 2 rounds, 2n wire, n
// reduced):
//
//	ring          2(N-1) rounds   2(N-1)/N·n wire      (N-1)/N·n reduced
//	doubling      L + 2f          (L + 2f)·n           (L + f)·n
//	rabenseifner  2L + 2f         (2(p2-1)/p2 + 2f)·n  ((p2-1)/p2 + f)·n
//	bidir         2(N-1)          2(N-1)/N·n / Duplex  (N-1)/N·n
//
// Recursive doubling and Rabenseifner send a message of more than 4 MiB
// (xfer.MaxPiece) as several frames in lockstep, each a round; the ring's
// pieces are pipelined and cost no extra rounds.
//
// bidir is the ring's schedule on two counter-rotating rings, each with half
// of the vector: its wire bytes per direction halve, but only a full-duplex
// link with spare capacity turns that into time. On loopback both
// directions are copies made by the same CPUs, so Duplex is 1 here and bidir
// is priced like the ring; it is never chosen automatically.
type costModel struct {
	Alpha  float64 // seconds per message latency
	Beta   float64 // seconds per byte sent
	Gamma  float64 // seconds per byte reduced
	Duplex float64 // how many times faster two directions move bytes than one
}

// reduceGamma is the reduction kernel's own time per byte, from
//
//	go test -run='^$' -bench='Kernel/Sum-float32/simd' ./internal/kernel/
//
// 30 GB/s in cache (4 MiB), 4-8 GB/s out of it (64 MiB): 0.1 ns/B. It
// belongs to the CPU, not to the transport, and is given rather than fitted
// because the algorithms' wire and reduced bytes are too nearly proportional
// for a fit to tell Beta from Gamma (left free, it puts everything in Beta
// and Gamma = 0).
const reduceGamma = 0.1e-9

// modelOf is the cost model of a communicator whose links cost tc: the
// transport's Alpha, Beta and Duplex (see transport.Cost; the TCP
// constants and how they were fitted are in package transport) and the
// kernel's Gamma.
func modelOf(tc transport.Cost) costModel {
	return costModel{Alpha: tc.Alpha, Beta: tc.Beta, Gamma: reduceGamma, Duplex: max(tc.Duplex, 1)}
}

// cost is one collective's critical path in the model's units.
type cost struct {
	rounds, wire, reduced float64
}

func (m costModel) seconds(c cost) float64 {
	return c.rounds*m.Alpha + c.wire*m.Beta + c.reduced*m.Gamma
}

// predict is the model's time for c.
func (m costModel) predict(c cost) time.Duration {
	return time.Duration(m.seconds(c) * 1e9)
}

// pow2Floor is the largest power of two not above n (n >= 1), and log2 of it.
func pow2Floor(n int) (p2, l int) {
	p2 = 1
	for p2*2 <= n {
		p2 *= 2
		l++
	}
	return p2, l
}

// allReduceCost is the critical path of an AllReduce of bytes on size ranks.
func (m costModel) allReduceCost(algo algorithm, size, bytes int) cost {
	if size <= 1 {
		return cost{}
	}
	n, N := float64(bytes), float64(size)
	p2, l := pow2Floor(size)
	L, P := float64(l), float64(p2)
	f := 0.0
	if p2 != size {
		f = 1
	}
	// Each message of a whole vector (or half, quarter...) goes in frames
	// of at most xfer.MaxPiece; fold moves the whole vector twice.
	fold := 2 * f * frames(bytes)
	switch algo {
	case algoDoubling:
		return cost{rounds: L*frames(bytes) + fold, wire: (L + 2*f) * n, reduced: (L + f) * n}
	case algoRabenseifner:
		var rounds float64
		for k := 1; k <= l; k++ {
			rounds += 2 * frames(bytes>>k) // a halving step and its doubling twin
		}
		return cost{rounds: rounds + fold, wire: (2*(P-1)/P + 2*f) * n, reduced: ((P-1)/P + f) * n}
	}
	rounds := 2 * (N - 1)
	wire := 2 * (N - 1) / N * n
	if algo == algoBidir {
		wire /= max(m.Duplex, 1)
	}
	return cost{rounds: rounds, wire: wire, reduced: (N - 1) / N * n}
}

// frames is how many frames a message of b bytes takes.
func frames(b int) float64 { return float64(max(1, (b+xfer.MaxPiece-1)/xfer.MaxPiece)) }

// autoAllReduce are the algorithms the model chooses among; bidir only runs
// when forced.
var autoAllReduce = [...]algorithm{algoRing, algoDoubling, algoRabenseifner}

// bestAllReduce is the model's cheapest AllReduce algorithm for bytes on
// size ranks (the first of autoAllReduce on a tie).
func (m costModel) bestAllReduce(size, bytes int) algorithm {
	best, bestT := algoRing, math.Inf(1)
	for _, a := range autoAllReduce {
		if t := m.seconds(m.allReduceCost(a, size, bytes)); t < bestT {
			best, bestT = a, t
		}
	}
	return best
}

// broadcastCost is the critical path of a Broadcast of bytes on size ranks:
// algoDoubling is the binomial tree, ceil(log2 N) rounds each forwarding
// the whole vector; anything else the ring's chain, N-1 hops and the
// last rank's acknowledgement, pipelined in P pieces so that the vector
// crosses about (P+N-2)/P times one link's worth.
func (m costModel) broadcastCost(algo algorithm, size, bytes int) cost {
	if size <= 1 {
		return cost{}
	}
	n, N := float64(bytes), float64(size)
	if algo == algoDoubling {
		rounds := float64(bitsLen(size - 1))
		return cost{rounds: rounds, wire: rounds * n}
	}
	// The chain's pieces, as ring.Broadcast cuts them with default options.
	o := ring.DefaultOptions
	seg := min(o.SegmentBytes, max(o.MinSegmentBytes, (bytes+2*o.Depth-1)/(2*o.Depth)))
	P := float64(max(1, (bytes+seg-1)/seg))
	return cost{rounds: N, wire: (P + N - 2) / P * n}
}

// bestBroadcast is algoDoubling (the tree) or algoRing (the chain).
func (m costModel) bestBroadcast(size, bytes int) algorithm {
	if m.seconds(m.broadcastCost(algoDoubling, size, bytes)) < m.seconds(m.broadcastCost(algoRing, size, bytes)) {
		return algoDoubling
	}
	return algoRing
}
