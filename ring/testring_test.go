package ring

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringo-ml/ringo/link"
	"github.com/ringo-ml/ringo/transport"
)

// hangAfter bounds every wait for the ranks of a test, so that a hang shows
// up as a failure; nothing waits for it to pass.
const hangAfter = 2 * time.Minute

// countingStream counts the bytes written to the wrapped stream.
type countingStream struct {
	transport.Stream
	n *atomic.Int64
}

func (s countingStream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	s.n.Add(int64(n))
	return n, err
}

// testRank is one rank of a testRing.
type testRank struct {
	fail     *transport.Failure
	links    []*transport.Link // every link of the rank, to begin and end operations
	streams  []transport.Stream
	fwd, rev *Ring
}

// testRing is size ranks joined in a ring over in-process pipes with real
// transport links, each rank with its own Failure as if it ran in a process
// of its own. A rank whose Failure fires closes its streams, as a dying
// process would, so that a failure spreads around the ring (the collective
// layer spreads it with abort notices) and no rank is left waiting.
type testRing struct {
	ranks []*testRank
	sent  [][]*atomic.Int64 // sent[r][p]: bytes rank r wrote to rank p
	seq   uint64
}

// newTestRing builds the ring. wrap, if set, may replace a rank's link to its
// right neighbour as the rings see it.
func newTestRing(t testing.TB, size int, opt Options, wrap func(rank int, right *transport.Link) link.Link) *testRing {
	t.Helper()
	tr := &testRing{ranks: make([]*testRank, size), sent: make([][]*atomic.Int64, size)}
	linkTo := make([][]*transport.Link, size)
	for r := range size {
		rk := &testRank{}
		rk.fail = transport.NewFailure(func(error) {
			for _, s := range rk.streams {
				_ = s.Close()
			}
		})
		tr.ranks[r] = rk
		linkTo[r] = make([]*transport.Link, size)
		tr.sent[r] = make([]*atomic.Int64, size)
		for p := range size {
			tr.sent[r][p] = new(atomic.Int64)
		}
	}
	connect := func(a, b int) {
		sa, sb := transport.Pipe()
		ca := countingStream{sa, tr.sent[a][b]}
		cb := countingStream{sb, tr.sent[b][a]}
		tr.ranks[a].streams = append(tr.ranks[a].streams, ca)
		tr.ranks[b].streams = append(tr.ranks[b].streams, cb)
		linkTo[a][b] = transport.NewLink(b, transport.NewConn(ca), tr.ranks[a].fail, nil)
		linkTo[b][a] = transport.NewLink(a, transport.NewConn(cb), tr.ranks[b].fail, nil)
		tr.ranks[a].links = append(tr.ranks[a].links, linkTo[a][b])
		tr.ranks[b].links = append(tr.ranks[b].links, linkTo[b][a])
	}
	switch {
	case size == 2:
		connect(0, 1) // one connection is both neighbours
	case size > 2:
		for r := range size {
			connect(r, (r+1)%size)
		}
	}
	for r, rk := range tr.ranks {
		var left, right link.Link
		if size > 1 {
			left, right = linkTo[r][(r+size-1)%size], linkTo[r][(r+1)%size]
			if wrap != nil {
				right = wrap(r, linkTo[r][(r+1)%size])
			}
			if size == 2 {
				left = right
			}
		}
		rk.fwd = New(r, size, left, right, opt)
		rk.rev = rk.fwd.Reversed()
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, rk := range tr.ranks {
			for _, l := range rk.links {
				wg.Add(1)
				go func() { defer wg.Done(); l.Shutdown(false, 0) }()
			}
		}
		wg.Wait()
	})
	return tr
}

// waitAll waits for wg, failing the test if the ranks hang.
func waitAll(t testing.TB, wg *sync.WaitGroup) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(hangAfter):
		t.Fatalf("ranks still running after %v: a hang", hangAfter)
	}
}

// run runs fn on every rank in ranks (all if nil) as one operation, each
// on its own goroutine, and returns their errors by rank. expire, if not
// nil, is rank 0's deadline. A rank that fails does what a communicator
// does: it fails and quiesces its links.
func (tr *testRing) run(t testing.TB, ranks []int, expire <-chan time.Time, fn func(rank int) error) []error {
	t.Helper()
	tr.seq++
	if ranks == nil {
		for r := range tr.ranks {
			ranks = append(ranks, r)
		}
	}
	hdr := transport.Header{Comm: 7, Seq: tr.seq, Sig: transport.Signature{Kind: 1, Count: tr.seq}}
	errs := make([]error, len(tr.ranks))
	var wg sync.WaitGroup
	for _, r := range ranks {
		rk := tr.ranks[r]
		wg.Add(1)
		go func() {
			defer wg.Done()
			var exp <-chan time.Time
			if r == 0 {
				exp = expire
			}
			for _, l := range rk.links {
				l.Begin(context.Background(), hdr, exp)
			}
			err := fn(r)
			for _, l := range rk.links {
				l.End()
			}
			if err != nil {
				rk.fail.Fail(err)
				for _, l := range rk.links {
					l.Quiesce()
				}
			}
			errs[r] = err
		}()
	}
	waitAll(t, &wg)
	return errs
}

// do is run on every rank, returning the first error.
func (tr *testRing) do(t testing.TB, fn func(rank int) error) error {
	t.Helper()
	for r, err := range tr.run(t, nil, nil, fn) {
		if err != nil {
			return fmt.Errorf("rank %d: %w", r, err)
		}
	}
	return nil
}
