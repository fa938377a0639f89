package collective_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// Mixed async calls issued in one order on every rank complete with the
// right results, and a sync call issued after them runs after them.
func TestAsyncCallsRunInIssueOrder(t *testing.T) {
	const n, calls = 4, 24
	comms := local(t, n, tinyPipeline)
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		sums := make([][]int64, calls)
		bcasts := make([][]int32, calls)
		works := make([]*collective.Work, 0, 2*calls)
		for i := range calls {
			sums[i] = inputs[int64](r+i, 100+i, collective.Sum)
			works = append(works, collective.AllReduceAsync(ctx, c, sums[i], collective.Sum))
			bcasts[i] = make([]int32, 1+i%5)
			if r == i%n {
				for j := range bcasts[i] {
					bcasts[i][j] = int32(1000*i + j)
				}
			}
			works = append(works, collective.BroadcastAsync(ctx, c, bcasts[i], i%n))
		}
		// Issued after all of them: must not overtake them.
		if err := collective.Barrier(ctx, c); err != nil {
			return err
		}
		// The recorder shows the execution order: the issue order, the
		// Barrier last.
		st := c.Status()
		last := len(st.Recent) - 1
		if st.Recent[last].Call != "Barrier()" || st.Recent[last].Op != 2*calls+1 {
			return fmt.Errorf("rank %d: the Barrier ran as op #%d %s, want op #%d", r, st.Recent[last].Op, st.Recent[last].Call, 2*calls+1)
		}
		for k := last - 1; k >= 0; k-- {
			want := "AllReduce(int64"
			if (last-k)%2 == 1 {
				want = "Broadcast(int32"
			}
			if !strings.HasPrefix(st.Recent[k].Call, want) {
				return fmt.Errorf("rank %d: op #%d ran %s, want %s...", r, st.Recent[k].Op, st.Recent[k].Call, want)
			}
		}
		for _, w := range works {
			if err := w.Wait(); err != nil {
				return err
			}
		}
		for i := range calls {
			for j := range sums[i] {
				var want int64
				for q := range n {
					want += inputs[int64](q+i, 100+i, collective.Sum)[j]
				}
				if sums[i][j] != want {
					return fmt.Errorf("rank %d call %d: sum[%d] = %d, want %d", r, i, j, sums[i][j], want)
				}
			}
			for j, v := range bcasts[i] {
				if v != int32(1000*i+j) {
					return fmt.Errorf("rank %d call %d: broadcast[%d] = %d", r, i, j, v)
				}
			}
		}
		return nil
	}))
}

// Several goroutines of each rank issue calls in an agreed order (they pass
// a token), then wait for their own calls concurrently.
func TestAsyncCallsFromManyGoroutines(t *testing.T) {
	const n, goroutines, rounds = 3, 4, 6
	comms := local(t, n, collective.Config{})
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		tokens := make([]chan struct{}, goroutines)
		for g := range tokens {
			tokens[g] = make(chan struct{}, 1)
		}
		tokens[0] <- struct{}{}
		errs := make([]error, goroutines)
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var works []*collective.Work
				var bufs [][]float64
				for k := range rounds {
					<-tokens[g] // my turn to issue
					buf := inputs[float64](r+g, 50+k, collective.Sum)
					bufs = append(bufs, buf)
					works = append(works, collective.AllReduceAsync(ctx, c, buf, collective.Sum))
					tokens[(g+1)%goroutines] <- struct{}{}
				}
				for k, w := range works {
					if err := w.Wait(); err != nil {
						errs[g] = err
						return
					}
					for j, got := range bufs[k] {
						want := 0.0
						for q := range n {
							want += inputs[float64](q+g, 50+k, collective.Sum)[j]
						}
						if got != want {
							errs[g] = fmt.Errorf("goroutine %d round %d: [%d] = %v, want %v", g, k, j, got, want)
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	}))
}

func TestCloseWithAsyncCallsInFlight(t *testing.T) {
	comms := local(t, 2, collective.Config{})
	// Rank 1 never takes part: rank 0's calls wait until Close aborts them.
	works := []*collective.Work{
		collective.AllReduceAsync(ctx, comms[0], make([]float32, 1000), collective.Sum),
		collective.BarrierAsync(ctx, comms[0]),
	}
	require.NoError(t, comms[0].Close())
	for _, w := range works {
		err := w.Wait()
		require.Error(t, err)
		require.True(t, errorsIsAny(err, collective.ErrAborted, collective.ErrClosed), "%v", err)
	}
}

func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// Every …Async function, issued back to back on every rank (each returns at
// once, its call queued behind the ones before), gives the result of its
// synchronous twin, checked against a reference, and its Work's Done is
// closed once the call is over, after which Wait returns at once.
func TestEveryAsyncFunctionGivesTheResultOfItsCall(t *testing.T) {
	for _, n := range []int{1, 2, 3, 5} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			comms := local(t, n, tinyPipeline)
			const m = 13 // elements per rank or per block
			gatherRoot, scatterRoot, bcastRoot, reduceRoot := n-1, n/2, (n+1)%n, 0
			count := func(p, q int) int { return raggedCount(p, q, 1) } // zeros included
			agvCounts := make([]int, n)
			for p := range n {
				agvCounts[p] = count(p, 0)
			}
			type results struct {
				allReduce   []int64
				rsRecv      []int32
				agRecv      []float64
				bcast       []uint8
				reduceRecv  []float32
				gatherRecv  []int64
				scatterRecv []int32
				a2aRecv     []uint32
				agvRecv     []int8
				a2avRecv    []int32
				p2pRecv     []float64
			}
			got := make([]results, n)
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				g := &got[r]
				g.allReduce = inputs[int64](r, m, collective.Sum)
				g.rsRecv = make([]int32, m)
				g.agRecv = make([]float64, n*m)
				g.bcast = make([]uint8, m)
				if r == bcastRoot {
					copy(g.bcast, inputs[uint8](r, m, collective.Sum))
				}
				g.reduceRecv = make([]float32, m)
				g.gatherRecv = make([]int64, n*m)
				var scatterSend []int32
				if r == scatterRoot {
					scatterSend = inputs[int32](100, n*m, collective.Sum)
				}
				g.scatterRecv = make([]int32, m)
				g.a2aRecv = make([]uint32, n*m)
				g.agvRecv = make([]int8, sum(agvCounts))
				var a2avSend []int32
				sendCounts, recvCounts := make([]int, n), make([]int, n)
				for q := range n {
					a2avSend = append(a2avSend, inputs[int32](10*r+q, count(r, q), collective.Sum)...)
					sendCounts[q], recvCounts[q] = count(r, q), count(q, r)
				}
				g.a2avRecv = make([]int32, sum(recvCounts))
				g.p2pRecv = make([]float64, m)

				type named struct {
					call string
					work *collective.Work
				}
				works := []named{
					{"AllReduce", collective.AllReduceAsync(ctx, c, g.allReduce, collective.Sum)},
					{"ReduceScatter", collective.ReduceScatterAsync(ctx, c, inputs[int32](r, n*m, collective.Max), g.rsRecv, collective.Max)},
					{"AllGather", collective.AllGatherAsync(ctx, c, inputs[float64](r, m, collective.Sum), g.agRecv)},
					{"Broadcast", collective.BroadcastAsync(ctx, c, g.bcast, bcastRoot)},
					{"Reduce", collective.ReduceAsync(ctx, c, inputs[float32](r, m, collective.Min), g.reduceRecv, collective.Min, reduceRoot)},
					{"Gather", collective.GatherAsync(ctx, c, inputs[int64](r, m, collective.Sum), g.gatherRecv, gatherRoot)},
					{"Scatter", collective.ScatterAsync(ctx, c, scatterSend, g.scatterRecv, scatterRoot)},
					{"AllToAll", collective.AllToAllAsync(ctx, c, inputs[uint32](r, n*m, collective.Sum), g.a2aRecv)},
					{"Barrier", collective.BarrierAsync(ctx, c)},
					{"AllGatherV", collective.AllGatherVAsync(ctx, c, inputs[int8](r, agvCounts[r], collective.Sum), agvCounts, g.agvRecv)},
					{"AllToAllV", collective.AllToAllVAsync(ctx, c, a2avSend, sendCounts, g.a2avRecv, recvCounts)},
				}
				if n > 1 {
					works = append(works,
						named{"Send", collective.SendAsync(ctx, c, inputs[float64](r, m, collective.Prod), (r+1)%n, 3)},
						named{"Recv", collective.RecvAsync(ctx, c, g.p2pRecv, (r+n-1)%n, 3)})
				}
				// Wait by Done, newest first, then Wait, which must not block.
				for i := len(works) - 1; i >= 0; i-- {
					w := works[i]
					select {
					case <-w.work.Done():
					case <-time.After(testTimeout):
						return fmt.Errorf("rank %d: %s: Done not closed after %v", r, w.call, testTimeout)
					}
					if err := w.work.Wait(); err != nil {
						return fmt.Errorf("rank %d: %s: %w", r, w.call, err)
					}
				}
				return nil
			}))

			for r, g := range got {
				for i := range m {
					require.Equal(t, reference[int64](n, i, collective.Sum), g.allReduce[i], "rank %d AllReduce [%d]", r, i)
					require.Equal(t, reference[int32](n, r*m+i, collective.Max), g.rsRecv[i], "rank %d ReduceScatter [%d]", r, i)
				}
				require.Equal(t, inputs[uint8](bcastRoot, m, collective.Sum), g.bcast, "rank %d Broadcast", r)
				require.Equal(t, inputs[int32](100, n*m, collective.Sum)[r*m:(r+1)*m], g.scatterRecv, "rank %d Scatter", r)
				off, offV := 0, 0
				for p := range n {
					require.Equal(t, inputs[float64](p, m, collective.Sum), g.agRecv[p*m:(p+1)*m], "rank %d AllGather block %d", r, p)
					require.Equal(t, inputs[uint32](p, n*m, collective.Sum)[r*m:(r+1)*m], g.a2aRecv[p*m:(p+1)*m], "rank %d AllToAll from %d", r, p)
					require.Equal(t, inputs[int8](p, agvCounts[p], collective.Sum), g.agvRecv[off:off+agvCounts[p]], "rank %d AllGatherV block %d", r, p)
					off += agvCounts[p]
					require.Equal(t, inputs[int32](10*p+r, count(p, r), collective.Sum), g.a2avRecv[offV:offV+count(p, r)], "rank %d AllToAllV from %d", r, p)
					offV += count(p, r)
				}
				if n > 1 {
					require.Equal(t, inputs[float64]((r+n-1)%n, m, collective.Prod), g.p2pRecv, "rank %d Recv", r)
				}
			}
			for i := range m {
				require.Equal(t, reference[float32](n, i, collective.Min), got[reduceRoot].reduceRecv[i], "Reduce [%d]", i)
			}
			for p := range n {
				require.Equal(t, inputs[int64](p, m, collective.Sum), got[gatherRoot].gatherRecv[p*m:(p+1)*m], "Gather block %d", p)
			}
		})
	}
}

func sum(counts []int) int {
	total := 0
	for _, c := range counts {
		total += c
	}
	return total
}

// Work.Done stays open while the call waits for a peer, closes when the call
// ends, and Wait then returns the call's result at once, as often as asked;
// a Work that failed at once (bad arguments) is done when returned.
func TestWorkDone(t *testing.T) {
	comms := local(t, 2, collective.Config{})
	buf := []float32{1, 2}
	w := collective.AllReduceAsync(ctx, comms[0], buf, collective.Sum)
	// Provably in progress: begun, and rank 1 has not called.
	require.Eventually(t, func() bool { return comms[0].Status().Running != "" }, testTimeout, time.Millisecond)
	select {
	case <-w.Done():
		t.Fatalf("Done closed while the call waits for rank 1 (err %v)", w.Wait())
	default:
	}
	require.NoError(t, collective.AllReduce(ctx, comms[1], []float32{10, 20}, collective.Sum))
	select {
	case <-w.Done():
	case <-time.After(testTimeout):
		t.Fatal("Done not closed after the call ended")
	}
	require.NoError(t, w.Wait())
	require.NoError(t, w.Wait())
	require.Equal(t, []float32{11, 22}, buf)

	bad := collective.SendAsync(ctx, comms[0], buf, 0, 0) // to itself
	select {
	case <-bad.Done():
	default:
		t.Fatal("a Work refused for its arguments is not done")
	}
	require.ErrorIs(t, bad.Wait(), collective.ErrInvalid)

	// A failed call's Work: done, with the error, every time.
	failed := collective.BroadcastAsync(ctx, comms[0], buf, 5) // no rank 5: aborts
	<-failed.Done()
	require.ErrorIs(t, failed.Wait(), collective.ErrInvalid)
	require.ErrorIs(t, failed.Wait(), collective.ErrAborted)
}
