package ring

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/transport"
)

// bdHangAfter bounds every wait for the ranks of a test, so that a hang shows
// up as a failure; nothing waits for it to pass.
const bdHangAfter = 2 * time.Minute

// bdCountingStream counts the bytes written to the wrapped stream.
type bdCountingStream struct {
	transport.Stream
	n *atomic.Int64
}

func (s bdCountingStream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	s.n.Add(int64(n))
	return n, err
}

// bdRank is one rank of a bdRing.
type bdRank struct {
	fail     *transport.Failure
	links    []*transport.Link // every link of the rank, to begin and end operations
	streams  []transport.Stream
	fwd, rev *Ring
}

// bdRing is size ranks joined in a ring over in-process pipes with real
// transport links, each rank with its own Failure as if it ran in a process
// of its own. A rank whose Failure fires closes its streams, as a dying
// process would, so that a failure spreads around the ring (the collective
// layer spreads it with abort notices) and no rank is left waiting.
type bdRing struct {
	ranks []*bdRank
	sent  [][]*atomic.Int64 // sent[r][p]: bytes rank r wrote to rank p
	seq   uint64
}

// newBDRing builds the ring. wrap, if set, may replace a rank's link to its
// right neighbour as the rings see it.
func newBDRing(t *testing.T, size int, opt Options, wrap func(rank int, right *transport.Link) Link) *bdRing {
	t.Helper()
	tr := &bdRing{ranks: make([]*bdRank, size), sent: make([][]*atomic.Int64, size)}
	linkTo := make([][]*transport.Link, size)
	for r := range size {
		rk := &bdRank{}
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
		ca := bdCountingStream{sa, tr.sent[a][b]}
		cb := bdCountingStream{sb, tr.sent[b][a]}
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
		var left, right Link
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

// bdRun runs one bidirectional allreduce of bufs[r] on every rank in
// ranks (all if nil), each on its own goroutine, and returns their errors
// by rank. expire, if not nil, is rank 0's deadline channel. A rank that
// fails does what a communicator does: it fails and quiesces its links.
func bdRun[T kernel.Elem](t *testing.T, tr *bdRing, bufs [][]T, red Reducer[T], ranks []int, expire <-chan time.Time) []error {
	t.Helper()
	tr.seq++
	if ranks == nil {
		for r := range tr.ranks {
			ranks = append(ranks, r)
		}
	}
	hdr := transport.Header{Comm: 7, Seq: tr.seq, Sig: transport.Signature{Kind: 1, DType: uint8(kernel.TypeOf[T]()), Root: -1, Count: uint64(len(bufs[0]))}}
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
			err := AllReduceBidirectional(rk.fwd, rk.rev, bufs[r], red)
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
	bdWaitAll(t, &wg)
	return errs
}

// bdWaitAll waits for wg, failing the test if the ranks hang.
func bdWaitAll(t *testing.T, wg *sync.WaitGroup) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(bdHangAfter):
		t.Fatalf("ranks still running after %v: a hang", bdHangAfter)
	}
}

func bdIsFloat[T kernel.Elem]() bool {
	var z T
	switch any(z).(type) {
	case float32, float64:
		return true
	}
	return false
}

// bdInputs returns every rank's vector of n elements: values in [-1, 1) for
// floats, any value for integers (sums wrap, as the kernels' do).
func bdInputs[T kernel.Elem](size, n int, seed uint64) [][]T {
	rng := rand.New(rand.NewPCG(seed, uint64(size*1_000_003+n)))
	bufs := make([][]T, size)
	for r := range bufs {
		bufs[r] = make([]T, n)
		for i := range bufs[r] {
			if bdIsFloat[T]() {
				bufs[r][i] = T(rng.Float64()*2 - 1)
			} else {
				bufs[r][i] = T(rng.Int64N(1 << 7)) // fits int8 and uint8
			}
		}
	}
	return bufs
}

// bdCheckSum checks that every rank holds the sum of in, to float tolerance
// against a float64 reference (exactly for integers, wrapping as Go does),
// and that all ranks hold the same bits.
func bdCheckSum[T kernel.Elem](t *testing.T, in, out [][]T) {
	t.Helper()
	n := len(in[0])
	for i := range n {
		var exact T
		var ref, mag float64
		for r := range in {
			exact += in[r][i]
			ref += float64(in[r][i])
			mag += math.Abs(float64(in[r][i]))
		}
		got := out[0][i]
		if bdIsFloat[T]() {
			// float32 rounds each partial sum: at most size·2^-24 of the magnitude.
			if math.Abs(float64(got)-ref) > 1e-6*float64(len(in))*max(mag, 1) {
				require.Failf(t, "wrong sum", "element %d of %d: got %v, want %v", i, n, got, ref)
			}
		} else if got != exact {
			require.Failf(t, "wrong sum", "element %d of %d: got %v, want %v", i, n, got, exact)
		}
	}
	for r := 1; r < len(out); r++ {
		if !bytes.Equal(kernel.Bytes(out[0]), kernel.Bytes(out[r])) {
			require.Failf(t, "ranks differ", "rank %d's result is not bitwise rank 0's", r)
		}
	}
}

func bdSum[T kernel.Elem](t *testing.T) Reducer[T] {
	k, ok := kernel.For[T](kernel.Sum)
	require.True(t, ok)
	return Reducer[T]{Kernel: k}
}

// bdCase runs the allreduce of fresh bdInputs on tr twice (the second
// run reuses the rings' scratch and links) and checks both results.
func bdCase[T kernel.Elem](t *testing.T, tr *bdRing, n int) {
	t.Helper()
	size := len(tr.ranks)
	for run := range 2 {
		in := bdInputs[T](size, n, uint64(run))
		out := make([][]T, size)
		for r := range out {
			out[r] = append([]T(nil), in[r]...)
		}
		errs := bdRun(t, tr, out, bdSum[T](t), nil, nil)
		for r, err := range errs {
			require.NoError(t, err, "rank %d, run %d", r, run)
		}
		bdCheckSum(t, in, out)
	}
}

// TestAllReduceBidirectional checks sums and bitwise agreement for 1..8
// ranks and awkward lengths: empty, one element, fewer elements than ranks,
// primes, and long odd vectors that divide into neither chunks nor pieces.
// Small pieces make the split happen at short lengths too.
func TestAllReduceBidirectional(t *testing.T) {
	tiny := Options{SegmentBytes: 64, MinSegmentBytes: 8, Depth: 3}
	mid := Options{SegmentBytes: 4 << 10, MinSegmentBytes: 256, Depth: 2}
	for size := 1; size <= 8; size++ {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			tr := newBDRing(t, size, tiny, nil)
			for _, n := range []int{0, 1, max(size-1, 1), size + 1, 2, 7, 13, 31, 97, 257, 1009} {
				t.Run(fmt.Sprintf("tiny/float32/n=%d", n), func(t *testing.T) { bdCase[float32](t, tr, n) })
				t.Run(fmt.Sprintf("tiny/int8/n=%d", n), func(t *testing.T) { bdCase[int8](t, tr, n) })
			}
			tr = newBDRing(t, size, mid, nil)
			for _, n := range []int{10_007, 65_537} {
				t.Run(fmt.Sprintf("mid/float64/n=%d", n), func(t *testing.T) { bdCase[float64](t, tr, n) })
				t.Run(fmt.Sprintf("mid/int32/n=%d", n), func(t *testing.T) { bdCase[int32](t, tr, n) })
			}
			tr = newBDRing(t, size, DefaultOptions, nil)
			for _, n := range []int{5, 300_007} {
				t.Run(fmt.Sprintf("default/float32/n=%d", n), func(t *testing.T) { bdCase[float32](t, tr, n) })
			}
		})
	}
}

// TestAllReduceBidirectionalUsesBothDirections checks what the pair is for:
// with the vector split, every link carries about as many bytes one way as
// the other (the one-way ring sends all of its data one way).
func TestAllReduceBidirectionalUsesBothDirections(t *testing.T) {
	const size, n = 4, 1 << 18
	tr := newBDRing(t, size, DefaultOptions, nil)
	require.NotZero(t, bidirSplit(tr.ranks[0].fwd, n, 4))
	bdCase[float32](t, tr, n)
	for r := range size {
		p := (r + 1) % size
		there, back := tr.sent[r][p].Load(), tr.sent[p][r].Load()
		assert.InEpsilon(t, there, back, 0.05, "link %d-%d: %d bytes one way, %d the other", r, p, there, back)
	}
}

// bdRaceEnabled reports whether the test binary was built with -race, under
// which sync.Pool drops items on purpose and allocation counts mean nothing.
func bdRaceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// TestAllReduceBidirectionalAllocatesNothing checks the steady state: after
// warm-up, a bidirectional allreduce allocates nothing on any rank. Ranks
// other than 0 run on long-lived goroutines, so that only the calls count.
func TestAllReduceBidirectionalAllocatesNothing(t *testing.T) {
	if bdRaceEnabled() {
		t.Skip("the race detector allocates, and sync.Pool drops items under it")
	}
	const size, n = 4, 1 << 16
	tr := newBDRing(t, size, DefaultOptions, nil)
	require.NotZero(t, bidirSplit(tr.ranks[0].fwd, n, 4))
	red := bdSum[float32](t)
	bufs := bdInputs[float32](size, n, 1)
	call := func(r int, seq uint64) error {
		rk := tr.ranks[r]
		hdr := transport.Header{Comm: 7, Seq: seq, Sig: transport.Signature{Kind: 1, Root: -1, Count: n}}
		for _, l := range rk.links {
			l.Begin(context.Background(), hdr, nil)
		}
		err := AllReduceBidirectional(rk.fwd, rk.rev, bufs[r], red)
		for _, l := range rk.links {
			l.End()
		}
		return err
	}
	start := make([]chan uint64, size)
	done := make(chan error, size)
	for r := 1; r < size; r++ {
		start[r] = make(chan uint64)
		go func() {
			for seq := range start[r] {
				done <- call(r, seq)
			}
		}()
		defer close(start[r])
	}
	var seq uint64
	var err error
	one := func() {
		seq++
		for r := 1; r < size; r++ {
			start[r] <- seq
		}
		if e := call(0, seq); e != nil {
			err = e
		}
		for r := 1; r < size; r++ {
			if e := <-done; e != nil {
				err = e
			}
		}
	}
	for range 5 {
		one() // warm up: scratch, pooled halves, goroutine stacks
	}
	allocs := testing.AllocsPerRun(50, one)
	require.NoError(t, err)
	assert.Zero(t, allocs, "allocations per bidirectional allreduce across %d ranks", size)
}

// bdCrashingLink is a rank's right link that makes the rank fail, as if its
// process died, just before its crashAt-th send.
type bdCrashingLink struct {
	*transport.Link // the receive side and Interrupt go straight through
	sends, crashAt  int
	crash           func()
}

func (l *bdCrashingLink) Send(p []byte) (uint64, error) {
	if l.sends++; l.sends == l.crashAt {
		l.crash()
	}
	return l.Link.Send(p)
}

// TestAllReduceBidirectionalPeerFailure fails one rank in the middle of a
// long call: every rank must return an error (none hangs), and the error is
// the failure, not the interruption of a half by the other.
func TestAllReduceBidirectionalPeerFailure(t *testing.T) {
	opt := Options{SegmentBytes: 256, MinSegmentBytes: 64, Depth: 2}
	for _, size := range []int{3, 4, 5, 8} {
		for _, victim := range []int{0, size / 2, size - 1} {
			t.Run(fmt.Sprintf("size=%d/victim=%d", size, victim), func(t *testing.T) {
				var tr *bdRing
				tr = newBDRing(t, size, opt, func(rank int, right *transport.Link) Link {
					if rank != victim {
						return right
					}
					return &bdCrashingLink{Link: right, crashAt: 5, crash: func() {
						tr.ranks[victim].fail.Fail(fmt.Errorf("rank %d crashed", victim))
					}}
				})
				const n = 20_011
				require.NotZero(t, bidirSplit(tr.ranks[0].fwd, n, 4))
				bufs := bdInputs[float32](size, n, 1)
				errs := bdRun(t, tr, bufs, bdSum[float32](t), nil, nil)
				for r, err := range errs {
					require.Error(t, err, "rank %d", r)
					assert.NotErrorIs(t, err, errOtherHalf, "rank %d returned its interrupted half's error", r)
				}
			})
		}
	}
}

// TestAllReduceBidirectionalTimeoutStopsBothHalves gives one rank a deadline
// that fires while the call waits for an absent rank. A timer's tick reaches
// one waiter only, so only one half sees it and fails without failing the
// communicator; the other half must be interrupted, and the call must
// return the timeout.
func TestAllReduceBidirectionalTimeoutStopsBothHalves(t *testing.T) {
	const size, n = 4, 4096
	tr := newBDRing(t, size, Options{SegmentBytes: 256, MinSegmentBytes: 64, Depth: 2}, nil)
	expire := make(chan time.Time, 1)
	expire <- time.Now() // rank 2 never calls: every wait of rank 0 is stuck
	bufs := bdInputs[float32](size, n, 1)
	errs := bdRun(t, tr, bufs, bdSum[float32](t), []int{0, 1, 3}, expire)
	require.ErrorIs(t, errs[0], transport.ErrTimeout)
	assert.NotErrorIs(t, errs[0], errOtherHalf)
	// Rank 0 failed its links on return; the failure reached the others.
	require.Error(t, errs[1])
	require.Error(t, errs[3])
}

// TestAllReduceBidirectionalSmallUsesOneRing checks that vectors too small
// to split, and rings of two, run on fwd alone: rev's scratch stays unmade.
func TestAllReduceBidirectionalSmallUsesOneRing(t *testing.T) {
	for _, size := range []int{2, 3} {
		tr := newBDRing(t, size, DefaultOptions, nil)
		bdCase[float32](t, tr, 1000)
		for r, rk := range tr.ranks {
			assert.Nil(t, rk.rev.recvSlots, "size %d, rank %d: the reverse ring ran", size, r)
		}
	}
}

func TestBidirSplit(t *testing.T) {
	opt := Options{SegmentBytes: 64, MinSegmentBytes: 8, Depth: 2}
	for size := 1; size <= 9; size++ {
		r := New(0, size, nil, nil, opt)
		for _, esize := range []int{1, 4, 8} {
			for n := 0; n < 200; n++ {
				mid := bidirSplit(r, n, esize)
				if mid == 0 {
					assert.False(t, size >= 3 && n*esize >= 2*size*8 && n*esize >= 16,
						"size %d, %d elements of %d bytes: not split", size, n, esize)
					continue
				}
				require.GreaterOrEqual(t, size, 3)
				require.Less(t, mid, n)
				require.Zero(t, mid*esize%8, "the second half starts 8-byte aligned")
				require.LessOrEqual(t, n-2*mid, 2*max(1, 8/esize), "halves balanced to alignment")
			}
		}
	}
}

// bdPeerLink is a Link that only names its peer, for checking neighbours.
type bdPeerLink int

func (bdPeerLink) Post([]byte) error           { return nil }
func (bdPeerLink) Wait() error                 { return nil }
func (bdPeerLink) Send([]byte) (uint64, error) { return 0, nil }
func (bdPeerLink) Flush(uint64) error          { return nil }

func bdRingOf(rank, size int) *Ring {
	return New(rank, size, bdPeerLink((rank+size-1)%size), bdPeerLink((rank+1)%size), DefaultOptions)
}

// TestReversedIsARing checks Reversed's argument for every size: positions
// are a permutation, and each rank receives from the rank one position
// before it and sends to the one after, over the links fwd leaves idle in
// those directions.
func TestReversedIsARing(t *testing.T) {
	for size := 1; size <= 9; size++ {
		posOf := make([]int, size)
		rankAt := make([]int, size)
		for i := range rankAt {
			rankAt[i] = -1
		}
		for r := range size {
			rev := bdRingOf(r, size).Reversed()
			require.Equal(t, size, rev.size)
			p := rev.rank
			require.Equal(t, -1, rankAt[p], "size %d: two ranks at position %d", size, p)
			rankAt[p], posOf[r] = r, p
			assert.Equal(t, bdPeerLink((r+1)%size), rev.left, "size %d, rank %d receives from its right", size, r)
			assert.Equal(t, bdPeerLink((r+size-1)%size), rev.right, "size %d, rank %d sends to its left", size, r)
		}
		for r := range size {
			rev := bdRingOf(r, size).Reversed()
			from, to := int(rev.left.(bdPeerLink)), int(rev.right.(bdPeerLink))
			assert.Equal(t, mod(posOf[r]-1, size), posOf[from], "size %d, rank %d", size, r)
			assert.Equal(t, mod(posOf[r]+1, size), posOf[to], "size %d, rank %d", size, r)
		}
	}
}
