package collective_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// raggedCount is how many elements rank p contributes (or sends to q):
// zeros included on purpose.
func raggedCount(p, q, salt int) int { return (p*7 + q*3 + salt) % 5 * (1 + salt%3) }

func TestAllGatherV(t *testing.T) {
	for n := 1; n <= 8; n++ {
		comms := local(t, n, collective.Config{})
		allGatherVOn(t, comms)
		closeAll(comms)
	}
}

func allGatherVOn(t *testing.T, comms []*collective.Comm) {
	n := len(comms)
	for salt := range 4 {
		counts := make([]int, n)
		total := 0
		for p := range n {
			counts[p] = raggedCount(p, 0, salt)
			total += counts[p]
		}
		recvs := make([][]float64, n)
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			recvs[r] = make([]float64, total)
			return collective.AllGatherV(ctx, c, inputs[float64](r, counts[r], collective.Sum), counts, recvs[r])
		}))
		for r := range n {
			off := 0
			for p := range n {
				require.Equal(t, inputs[float64](p, counts[p], collective.Sum), recvs[r][off:off+counts[p]], "n=%d salt=%d rank %d block %d", n, salt, r, p)
				off += counts[p]
			}
		}
	}
}

func TestAllToAllV(t *testing.T) {
	for n := 1; n <= 8; n++ {
		comms := local(t, n, collective.Config{})
		allToAllVOn(t, comms)
		closeAll(comms)
	}
}

func allToAllVOn(t *testing.T, comms []*collective.Comm) {
	n := len(comms)
	for salt := range 3 {
		// sent[p][q]: what rank p sends rank q.
		sent := make([][][]int32, n)
		for p := range n {
			sent[p] = make([][]int32, n)
			for q := range n {
				sent[p][q] = inputs[int32](100*p+q, raggedCount(p, q, salt), collective.Sum)
			}
		}
		recvs := make([][]int32, n)
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			var send []int32
			sendCounts, recvCounts := make([]int, n), make([]int, n)
			total := 0
			for q := range n {
				send = append(send, sent[r][q]...)
				sendCounts[q] = len(sent[r][q])
				recvCounts[q] = len(sent[q][r])
				total += recvCounts[q]
			}
			recvs[r] = make([]int32, total)
			return collective.AllToAllV(ctx, c, send, sendCounts, recvs[r], recvCounts)
		}))
		for r := range n {
			off := 0
			for p := range n {
				want := sent[p][r]
				require.Equal(t, want, recvs[r][off:off+len(want)], "n=%d salt=%d rank %d from %d", n, salt, r, p)
				off += len(want)
			}
		}
	}
}

func TestVCollectivesRejectBadCounts(t *testing.T) {
	comms := local(t, 2, collective.Config{})
	errs := each(comms, func(r int, c *collective.Comm) error {
		return collective.AllGatherV(ctx, c, make([]int8, 2), []int{2, -1}, make([]int8, 1))
	})
	requireAllAborted(t, errs, collective.ErrInvalid, "negative")

	// Rank 0 says it sends 3 to rank 1, rank 1 expects 2: both fail.
	comms = local(t, 2, collective.Config{})
	errs = each(comms, func(r int, c *collective.Comm) error {
		if r == 0 {
			return collective.AllToAllV(ctx, c, make([]int8, 4), []int{1, 3}, make([]int8, 2), []int{1, 1})
		}
		return collective.AllToAllV(ctx, c, make([]int8, 2), []int{1, 1}, make([]int8, 3), []int{2, 1})
	})
	requireAllAborted(t, errs, collective.ErrMismatch, "AllToAllV(int8)")
}

// AllGatherV and AllToAllV, called again and again with the same counts,
// allocate nothing, on any rank.
func TestVCollectivesSteadyStateAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	const n = 4
	comms := local(t, n, collective.Config{})
	counts := make([]int, n)
	sendCounts, recvCounts := make([][]int, n), make([][]int, n)
	for p := range n {
		counts[p] = raggedCount(p, 0, 1)
		sendCounts[p], recvCounts[p] = make([]int, n), make([]int, n)
	}
	for p := range n {
		for q := range n {
			sendCounts[p][q], recvCounts[q][p] = raggedCount(p, q, 2), raggedCount(p, q, 2)
		}
	}
	agvSend, agvRecv := make([][]float32, n), make([][]float32, n)
	a2aSend, a2aRecv := make([][]int32, n), make([][]int32, n)
	for r := range n {
		agvSend[r], agvRecv[r] = make([]float32, counts[r]), make([]float32, sum(counts))
		a2aSend[r], a2aRecv[r] = make([]int32, sum(sendCounts[r])), make([]int32, sum(recvCounts[r]))
	}
	requireNoAllocs(t, newDriver(t, comms, func(r int, c *collective.Comm) error {
		return collective.AllGatherV(ctx, c, agvSend[r], counts, agvRecv[r])
	}), "AllGatherV")
	requireNoAllocs(t, newDriver(t, comms, func(r int, c *collective.Comm) error {
		return collective.AllToAllV(ctx, c, a2aSend[r], sendCounts[r], a2aRecv[r], recvCounts[r])
	}), "AllToAllV")
}
