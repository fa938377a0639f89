package collective_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// former forms n ranks of a communicator with cfg (local, formTCP,
// formShm, formTwoHosts).
type former func(t testing.TB, n int, cfg collective.Config) []*collective.Comm

// formShm forms n ranks, all of this host, over shared memory.
func formShm(t testing.TB, n int, cfg collective.Config) []*collective.Comm {
	t.Helper()
	if cfg.Transport == "" {
		cfg.Transport = "shm"
	}
	cfg.Addr = freeAddr(t)
	return formAt(t, n, cfg, nil)
}

// twoHosts is the host formTwoHosts puts rank r of n on: the first half of
// the ranks (rounded up) on h0, the rest on h1.
func twoHosts(r, n int) string { return fmt.Sprintf("h%d", r/((n+1)/2)) }

// formTwoHosts forms n ranks that say they are on two hosts (Config.Host, as
// RINGO_HOST would): the default transport connects the ranks of each
// "host" through shared memory and the two hosts by TCP.
func formTwoHosts(t testing.TB, n int, cfg collective.Config) []*collective.Comm {
	t.Helper()
	cfg.Addr = freeAddr(t)
	return formAt(t, n, cfg, func(r int, c *collective.Config) { c.Host = twoHosts(r, n) })
}

// The collectives over shared memory, and over a mixed mesh (two "hosts"
// of shared memory with TCP between them): every collective, AllReduce of
// every element type with every op and odd count, on 1..8 ranks. The
// checks are those the mem transport's matrices make, on one communicator
// per size.
func TestEveryCollectiveOverSharedMemory(t *testing.T) {
	for _, tr := range []string{"shm", "mixed"} {
		for n := 1; n <= 8; n++ {
			t.Run(fmt.Sprintf("%s/n=%d", tr, n), func(t *testing.T) {
				cfg := tinyPipeline
				if n%2 == 0 {
					cfg = collective.Config{} // the default pipeline on every other size
				}
				everyCollectiveOn(t, formComms(t, tr, n, cfg))
			})
		}
	}
}

func everyCollectiveOn(t *testing.T, comms []*collective.Comm) {
	t.Run("AllReduce", func(t *testing.T) { allReduceEveryType(t, comms) })
	t.Run("ReduceScatter", func(t *testing.T) {
		reduceScatterOn[float32](t, comms)
		reduceScatterOn[float64](t, comms)
		reduceScatterOn[int64](t, comms)
		reduceScatterOn[uint8](t, comms)
	})
	t.Run("AllGather", func(t *testing.T) {
		allGatherOn[int8](t, comms)
		allGatherOn[uint32](t, comms)
		allGatherOn[float32](t, comms)
		allGatherOn[float64](t, comms)
	})
	t.Run("Broadcast", func(t *testing.T) { broadcastOn(t, comms) })
	t.Run("Reduce", func(t *testing.T) {
		reduceOn[float64](t, comms)
		reduceOn[int32](t, comms)
		reduceOn[uint8](t, comms)
	})
	t.Run("GatherScatter", func(t *testing.T) { gatherScatterOn(t, comms) })
	t.Run("AllToAll", func(t *testing.T) { allToAllOn(t, comms) })
	t.Run("AllGatherV", func(t *testing.T) { allGatherVOn(t, comms) })
	t.Run("AllToAllV", func(t *testing.T) { allToAllVOn(t, comms) })
	if len(comms) > 1 {
		t.Run("SendRecv", func(t *testing.T) {
			ringPass[int8](comms)(t)
			ringPass[float64](comms)(t)
		})
	}
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error { return collective.Barrier(ctx, c) }))
}

func allReduceEveryType(t *testing.T, comms []*collective.Comm) {
	allReduceOn[int8](t, comms)
	allReduceOn[uint8](t, comms)
	allReduceOn[int32](t, comms)
	allReduceOn[uint32](t, comms)
	allReduceOn[int64](t, comms)
	allReduceOn[uint64](t, comms)
	allReduceOn[float32](t, comms)
	allReduceOn[float64](t, comms)
}

// formHosts forms len(hosts) ranks, rank r saying it runs on hosts[r].
func formHosts(t testing.TB, hosts []string, cfg collective.Config) []*collective.Comm {
	t.Helper()
	cfg.Addr = freeAddr(t)
	return formAt(t, len(hosts), cfg, func(r int, c *collective.Config) { c.Host = hosts[r] })
}

// The hierarchical schedules, forced, on hosts of 2 and 4 ranks, 2 to 4
// hosts, ranks of a host contiguous or interleaved: AllReduce right for
// every type, op and odd count, the same bits on every rank; Broadcast from
// every root; AllGather of odd block sizes. Where hosts hold different
// numbers of ranks they do not apply, and the flat schedules run.
func TestHierarchicalCollectives(t *testing.T) {
	for _, layout := range []struct {
		name  string
		hosts []string
		hier  bool
		cfg   collective.Config
	}{
		{"2x2", []string{"a", "a", "b", "b"}, true, tinyPipeline},
		{"2x3 interleaved", []string{"a", "b", "a", "b", "a", "b"}, true, collective.Config{}},
		{"3x2", []string{"a", "a", "b", "b", "c", "c"}, true, collective.Config{}},
		{"2x4", []string{"a", "a", "a", "a", "b", "b", "b", "b"}, true, collective.Config{}},
		{"4x2 shuffled", []string{"d", "a", "c", "b", "a", "b", "d", "c"}, true, tinyPipeline},
		{"3+1", []string{"a", "a", "a", "b"}, false, collective.Config{}},
	} {
		t.Run(layout.name, func(t *testing.T) {
			cfg := layout.cfg
			cfg.Algorithm = "hier"
			comms := formHosts(t, layout.hosts, cfg)
			if layout.cfg == tinyPipeline {
				allReduceEveryType(t, comms)
			} else { // the pipeline's pieces are the ring's: two types suffice
				allReduceOn[float32](t, comms)
				allReduceOn[int64](t, comms)
			}
			lastCallsWere(t, comms, "AllReduce", layout.hier)
			broadcastOn(t, comms)
			lastCallsWere(t, comms, "Broadcast", layout.hier)
			allGatherOn[float32](t, comms)
			allGatherOn[int8](t, comms)
			lastCallsWere(t, comms, "AllGather", layout.hier)
		})
	}
}

// lastCallsWere checks that every rank's last call was a call of kind,
// hierarchical or not.
func lastCallsWere(t *testing.T, comms []*collective.Comm, kind string, hier bool) {
	t.Helper()
	for r, c := range comms {
		recent := c.Status().Recent
		require.NotEmpty(t, recent)
		call := recent[len(recent)-1].Call
		require.True(t, strings.HasPrefix(call, kind), "rank %d: %s", r, call)
		assert.Equal(t, hier, strings.Contains(call, "hier"), "rank %d: %s", r, call)
	}
}

// Where the ranks of several hosts share memory within each, the cost
// model takes the hierarchical AllReduce for large vectors, and the
// result is right.
func TestCostModelChoosesHierarchicalAcrossHosts(t *testing.T) {
	comms := formTwoHosts(t, 4, collective.Config{})
	const count = 1<<20 + 3
	bufs := make([][]float32, 4)
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		bufs[r] = inputs[float32](r, count, collective.Sum)
		return collective.AllReduce(ctx, c, bufs[r], collective.Sum)
	}))
	for i := range count {
		require.Equal(t, reference[float32](4, i, collective.Sum), bufs[0][i], "element %d", i)
	}
	requireIdentical(t, bufs)
	assert.Contains(t, comms[0].Status().Recent[0].Call, "hier")
}

// LocalRank and LocalSize count the ranks on this rank's host, in rank
// order, in the world and in its sub-communicators; the transport does not
// change them.
func TestLocalRankAndSize(t *testing.T) {
	check := func(t *testing.T, comms []*collective.Comm, wantRank, wantSize []int) {
		t.Helper()
		for r, c := range comms {
			assert.Equal(t, wantRank[r], c.LocalRank(), "rank %d", r)
			assert.Equal(t, wantSize[r], c.LocalSize(), "rank %d", r)
		}
	}
	t.Run("one host", func(t *testing.T) {
		check(t, local(t, 3, collective.Config{}), []int{0, 1, 2}, []int{3, 3, 3})
		check(t, formShm(t, 3, collective.Config{}), []int{0, 1, 2}, []int{3, 3, 3})
		check(t, formTCP(t, 2, collective.Config{}), []int{0, 1}, []int{2, 2})
	})
	t.Run("hosts", func(t *testing.T) {
		comms := formHosts(t, []string{"x", "y", "x", "x", "y"}, collective.Config{})
		check(t, comms, []int{0, 0, 1, 2, 1}, []int{3, 2, 3, 3, 2})
		// Sub-communicators: ranks 1..4 (y, x, x, y), and each host's.
		subs := make([]*collective.Comm, len(comms))
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			color := 0
			if r == 0 {
				color = collective.Undefined
			}
			var err error
			subs[r], err = c.Split(ctx, color, r)
			return err
		}))
		check(t, subs[1:], []int{0, 0, 1, 1}, []int{2, 2, 2, 2})
		closeAll(subs)
	})
}

// No shared memory segment is left in /dev/shm: its name is removed as
// soon as both ends have mapped it, so not after forming, nor after a
// normal close, nor after an abort. (After a SIGKILL of any rank:
// TestKilledRankIsNamedOnEveryRank.)
func TestNoSharedMemorySegmentIsLeftBehind(t *testing.T) {
	self := []int{os.Getpid()}
	require.Empty(t, segmentsOf(t, self), "segments of this process before the test")
	comms := formShm(t, 4, collective.Config{})
	assert.Empty(t, segmentsOf(t, self), "after forming")
	allReduceOn[float32](t, comms)
	closeAll(comms)
	assert.Empty(t, segmentsOf(t, self), "after a normal close")

	comms = formTwoHosts(t, 4, collective.Config{})
	errs := each(comms, func(r int, c *collective.Comm) error {
		if r == 3 {
			c.Abort(errors.New("giving up"))
		}
		return collective.AllReduce(ctx, c, make([]float64, 1000), collective.Sum)
	})
	requireAllAborted(t, errs, nil, "giving up")
	closeAll(comms)
	assert.Empty(t, segmentsOf(t, self), "after an abort")
}
