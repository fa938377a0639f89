package shm

import (
	"time"

	"github.com/ringo-ml/ringo/transport"
)

// Ring capacities a segment may have: a creator picks one (Options), the
// other side refuses any other size it is offered.
const (
	MinSegmentBytes = 4 << 10
	MaxSegmentBytes = 64 << 20
)

// Options tune a Connector's streams.
type Options struct {
	// SegmentBytes is the ring capacity of each direction of a link: a
	// power of two from MinSegmentBytes to MaxSegmentBytes; zero means
	// DefaultSegmentBytes.
	SegmentBytes int
	// Spin is how long a side that finds its ring empty (or full) polls it
	// before it sleeps; zero means DefaultSpin, negative no polling at all.
	Spin time.Duration
}

// DefaultSegmentBytes and DefaultSpin are the defaults of Options.
//
// DefaultSpin: a sleeper's wake-up (the peer's bell, through the network
// poller) takes about ten microseconds, a poll that finds the data tens of
// nanoseconds, so a rank waiting for its neighbour's next frame should
// poll about as long as a frame usually takes to come; every poll yields,
// so that a rank sharing its core lets the others run. Between processes
// (ringbench, median of interleaved sweeps, 2026-11-30), on 2 ranks an
// 8-byte AllReduce took 1.1-1.6 us with 20 us of spin, 10 us and more
// without; on 4 ranks (2 cores) 5, 20 and 100 us were within the noise of
// each other (20-40 us).
const (
	DefaultSegmentBytes = 1 << 20
	DefaultSpin         = 20 * time.Microsecond
)

func (o Options) normalized() Options {
	if o.SegmentBytes == 0 {
		o.SegmentBytes = DefaultSegmentBytes
	}
	if o.Spin == 0 {
		o.Spin = DefaultSpin
	}
	return o
}

// shmCost is what the cost model should assume of shared-memory links,
// fitted on the development machine (2-CPU AMD EPYC VM, Go 1.26, ranks as
// processes, float32 Sum AllReduce, 2026-11-30) to ringbench sweeps with
// each algorithm forced, 3 interleaved rounds, the median kept:
//
//	for n in 2 4; for algo in ring doubling rabenseifner:
//	    ringbench -np $n -transport shm --algo $algo -s 8,16384,262144,1048576,16777216 \
//	        -w 5 -min-sample 2ms -budget 0.2s -q
//	(rows rewritten as BenchmarkAllReduceModel lines)
//	RINGO_FIT_GAMMA=0.1 RINGO_FIT=rows.txt go test -run=TestFitCostModel -v ./collective/
//
// printed Alpha = 1.2 us, Beta = 0.047 ns/B, rms relative error 55%: the
// 2-rank rows fit within 7-49%, while 4 ranks on 2 CPUs took 2-7 times
// the model (every hop may wait for a core). The choices it makes there
// still match the measurements' order: recursive doubling up to 16 KiB,
// Rabenseifner from 256 KiB. Both directions of a link are copies by the
// same CPUs: Duplex is 1.
var shmCost = transport.Cost{Alpha: 1.2e-6, Beta: 0.047e-9, Duplex: 1}

// LinkCost is what the cost model should assume of shared-memory links
// (every Connector's Cost).
func LinkCost() transport.Cost { return shmCost }
