package ring

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime/debug"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/link"
	"github.com/ringo-ml/ringo/transport"
)

// bdRun runs one bidirectional allreduce of bufs[r] on every rank in
// ranks (all if nil) and returns their errors by rank (see testRing.run).
func bdRun[T link.Elem](t *testing.T, tr *testRing, bufs [][]T, red link.Reducer[T], ranks []int, expire <-chan time.Time) []error {
	t.Helper()
	return tr.run(t, ranks, expire, func(r int) error {
		rk := tr.ranks[r]
		return AllReduceBidirectional(rk.fwd, rk.rev, bufs[r], red)
	})
}

func bdIsFloat[T link.Elem]() bool {
	var z T
	switch any(z).(type) {
	case float32, float64:
		return true
	}
	return false
}

// bdInputs returns every rank's vector of n elements: values in [-1, 1) for
// floats, any value for integers (sums wrap, as the kernels' do).
func bdInputs[T link.Elem](size, n int, seed uint64) [][]T {
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
func bdCheckSum[T link.Elem](t *testing.T, in, out [][]T) {
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

func bdSum[T link.Elem](*testing.T) link.Reducer[T] { return Sum[T]() }

// bdCase runs the allreduce of fresh bdInputs on tr twice (the second
// run reuses the rings' scratch and links) and checks both results.
func bdCase[T link.Elem](t *testing.T, tr *testRing, n int) {
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
			tr := newTestRing(t, size, tiny, nil)
			for _, n := range []int{0, 1, max(size-1, 1), size + 1, 2, 7, 13, 31, 97, 257, 1009} {
				t.Run(fmt.Sprintf("tiny/float32/n=%d", n), func(t *testing.T) { bdCase[float32](t, tr, n) })
				t.Run(fmt.Sprintf("tiny/int8/n=%d", n), func(t *testing.T) { bdCase[int8](t, tr, n) })
			}
			tr = newTestRing(t, size, mid, nil)
			for _, n := range []int{10_007, 65_537} {
				t.Run(fmt.Sprintf("mid/float64/n=%d", n), func(t *testing.T) { bdCase[float64](t, tr, n) })
				t.Run(fmt.Sprintf("mid/int32/n=%d", n), func(t *testing.T) { bdCase[int32](t, tr, n) })
			}
			tr = newTestRing(t, size, DefaultOptions, nil)
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
	tr := newTestRing(t, size, DefaultOptions, nil)
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
	tr := newTestRing(t, size, DefaultOptions, nil)
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
				var tr *testRing
				tr = newTestRing(t, size, opt, func(rank int, right *transport.Link) link.Link {
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
	tr := newTestRing(t, size, Options{SegmentBytes: 256, MinSegmentBytes: 64, Depth: 2}, nil)
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
		tr := newTestRing(t, size, DefaultOptions, nil)
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

func testRingOf(rank, size int) *Ring {
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
			rev := testRingOf(r, size).Reversed()
			require.Equal(t, size, rev.size)
			p := rev.rank
			require.Equal(t, -1, rankAt[p], "size %d: two ranks at position %d", size, p)
			rankAt[p], posOf[r] = r, p
			assert.Equal(t, bdPeerLink((r+1)%size), rev.left, "size %d, rank %d receives from its right", size, r)
			assert.Equal(t, bdPeerLink((r+size-1)%size), rev.right, "size %d, rank %d sends to its left", size, r)
		}
		for r := range size {
			rev := testRingOf(r, size).Reversed()
			from, to := int(rev.left.(bdPeerLink)), int(rev.right.(bdPeerLink))
			assert.Equal(t, mod(posOf[r]-1, size), posOf[from], "size %d, rank %d", size, r)
			assert.Equal(t, mod(posOf[r]+1, size), posOf[to], "size %d, rank %d", size, r)
		}
	}
}
