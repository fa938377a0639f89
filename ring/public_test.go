package ring_test

// These tests use package ring as a program outside the module would: its
// public API and links built from public API only (a link.Link written
// here, and transport's links over in-process pipes). They import nothing
// internal.

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/link"
	"github.com/ringo-ml/ringo/ring"
	"github.com/ringo-ml/ringo/transport"
)

// chanLink is a link.Link written against the contract alone: frames go
// through a channel, copied on Send (so Flush has nothing to wait for), and
// a receive fails unless the frame fits the buffer posted for it exactly.
type chanLink struct {
	in     <-chan []byte
	out    chan<- []byte
	posted [][]byte
}

func (l *chanLink) Post(dst []byte) error { l.posted = append(l.posted, dst); return nil }

func (l *chanLink) Wait() error {
	if len(l.posted) == 0 {
		return fmt.Errorf("chanLink: Wait without a posted receive")
	}
	dst := l.posted[0]
	l.posted = l.posted[1:]
	select {
	case f := <-l.in:
		if len(f) != len(dst) {
			return fmt.Errorf("chanLink: frame of %d bytes for a receive of %d", len(f), len(dst))
		}
		copy(dst, f)
		return nil
	case <-time.After(time.Minute):
		return fmt.Errorf("chanLink: no frame within a minute: a hang")
	}
}

func (l *chanLink) Send(src []byte) (uint64, error) {
	l.out <- append([]byte(nil), src...)
	return 0, nil
}

func (l *chanLink) Flush(uint64) error { return nil }

// chanPair returns the two ends of one connection.
func chanPair() (a, b link.Link) {
	ab, ba := make(chan []byte, 64), make(chan []byte, 64)
	return &chanLink{in: ba, out: ab}, &chanLink{in: ab, out: ba}
}

// transportPair returns the two ends of one connection as transport.Links
// over an in-process pipe, and a function that begins an operation on
// both (a transport.Link carries every frame under its operation's header;
// a communicator numbers them, here the test does).
func transportPair(t *testing.T) (a, b link.Link, begin func(seq uint64)) {
	sa, sb := transport.Pipe()
	fail := transport.NewFailure(nil)
	la := transport.NewLink(1, transport.NewConn(sa), fail, nil)
	lb := transport.NewLink(0, transport.NewConn(sb), fail, nil)
	t.Cleanup(func() {
		la.Shutdown(false, 0)
		lb.Shutdown(false, 0)
	})
	begin = func(seq uint64) {
		hdr := transport.Header{Comm: 1, Seq: seq, Sig: transport.Signature{Kind: 1, Count: seq}}
		la.Begin(context.Background(), hdr, nil)
		lb.Begin(context.Background(), hdr, nil)
	}
	return la, lb, begin
}

// testRing is size ranks joined in a ring.
type testRing struct {
	rs          []*ring.Ring
	left, right []link.Link // left[r]: rank r's link from r-1; right[r]: to r+1
	begin       func()      // to call before every operation
}

// rings joins size ranks in a ring, over chanLinks or over transport.Links.
func rings(t *testing.T, size int, opt ring.Options, overTransport bool) testRing {
	right := make([]link.Link, size)
	left := make([]link.Link, size)
	var begins []func(uint64)
	connect := func(a, b int) (link.Link, link.Link) {
		if overTransport {
			la, lb, bg := transportPair(t)
			begins = append(begins, bg)
			return la, lb
		}
		return chanPair()
	}
	switch {
	case size == 2:
		a, b := connect(0, 1) // one connection is both neighbours
		right[0], left[0], right[1], left[1] = a, a, b, b
	case size > 2:
		for r := range size {
			right[r], left[(r+1)%size] = connect(r, (r+1)%size)
		}
	}
	rs := make([]*ring.Ring, size)
	for r := range size {
		rs[r] = ring.New(r, size, left[r], right[r], opt)
	}
	var seq uint64
	return testRing{rs: rs, left: left, right: right, begin: func() {
		seq++
		for _, bg := range begins {
			bg(seq)
		}
	}}
}

// onEveryRank runs fn on every rank at once and requires that all succeed.
func onEveryRank(t *testing.T, size int, fn func(rank int) error) {
	t.Helper()
	testjob.RequireAllOK(t, testjob.Each(size, fn))
}

// input is rank's value at i: small integers, so that sums and products of
// up to 8 ranks are exact in every element type, and comparable with a
// float64 reference.
func input[T link.Elem](rank, i int, prod bool) T {
	if prod {
		return T([]int8{1, 2, 1, 3}[(rank+i)%4])
	}
	return T((rank*7 + i*3) % 13)
}

var reductions = []struct {
	name string
	ref  func(a, b float64) float64
}{
	{"Sum", func(a, b float64) float64 { return a + b }},
	{"Prod", func(a, b float64) float64 { return a * b }},
	{"Min", math.Min},
	{"Max", math.Max},
	{"Avg", func(a, b float64) float64 { return a + b }}, // then divided
}

func reducerNamed[T link.Elem](name string) link.Reducer[T] {
	switch name {
	case "Sum":
		return ring.Sum[T]()
	case "Prod":
		return ring.Prod[T]()
	case "Min":
		return ring.Min[T]()
	case "Max":
		return ring.Max[T]()
	}
	panic("no reducer " + name)
}

func bits[T link.Elem](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), len(s)*int(unsafe.Sizeof(s[0])))
}

// checkAllReduce runs AllReduce (or, with bidir, AllReduceBidirectional)
// of every reduction on size ranks and count elements of T, and compares
// every rank's result with the float64 reference, bit for bit.
func checkAllReduce[T link.Elem](t *testing.T, size, count int, opt ring.Options, overTransport, bidir bool) {
	isFloat := T(1)/T(2) != 0
	for _, red := range reductions {
		if red.name == "Avg" && !isFloat {
			continue
		}
		tr := rings(t, size, opt, overTransport)
		rs := tr.rs
		var revs []*ring.Ring
		for _, r := range rs {
			revs = append(revs, r.Reversed())
		}
		bufs := make([][]T, size)
		want := make([]T, count)
		for i := range count {
			acc := float64(input[T](0, i, red.name == "Prod"))
			for r := 1; r < size; r++ {
				acc = red.ref(acc, float64(input[T](r, i, red.name == "Prod")))
			}
			want[i] = T(acc)
			if red.name == "Avg" {
				want[i] /= T(size) // one division in T, as the ring's
			}
		}
		for r := range bufs {
			bufs[r] = make([]T, count)
			for i := range bufs[r] {
				bufs[r][i] = input[T](r, i, red.name == "Prod")
			}
		}
		tr.begin()
		onEveryRank(t, size, func(r int) error {
			var rd link.Reducer[T]
			if red.name == "Avg" {
				rd = avg[T]()
			} else {
				rd = reducerNamed[T](red.name)
			}
			if bidir {
				return ring.AllReduceBidirectional(rs[r], revs[r], bufs[r], rd)
			}
			return ring.AllReduce(rs[r], bufs[r], rd)
		})
		for r := range size {
			require.Equal(t, bits(want), bits(bufs[r]), "%s: rank %d", red.name, r)
		}
	}
}

// avg is ring.Avg for the float types, reached from a T that may be any
// element type (the caller knows it is a float).
func avg[T link.Elem]() link.Reducer[T] {
	switch any(T(0)).(type) {
	case float32:
		return any(ring.Avg[float32]()).(link.Reducer[T])
	case float64:
		return any(ring.Avg[float64]()).(link.Reducer[T])
	}
	panic("Avg of an integer type")
}

// small pieces and a shallow pipeline, so that short vectors run through
// many pieces and rounds.
var smallPieces = ring.Options{SegmentBytes: 16, MinSegmentBytes: 8, Depth: 2}

func TestAllReduceOverLinksOfOurOwn(t *testing.T) {
	for size := 1; size <= 8; size++ {
		for _, count := range []int{0, 1, 7, 97} {
			t.Run(fmt.Sprintf("size=%d/count=%d", size, count), func(t *testing.T) {
				checkAllReduce[float32](t, size, count, smallPieces, false, false)
				checkAllReduce[float64](t, size, count, ring.Options{}, false, false)
				checkAllReduce[int32](t, size, count, smallPieces, false, false)
				checkAllReduce[uint8](t, size, count, ring.Options{}, false, false)
			})
		}
	}
}

func TestAllReduceBidirectionalOverLinksOfOurOwn(t *testing.T) {
	// Large enough to split: every half gives each rank a chunk of at least
	// MinSegmentBytes.
	opt := ring.Options{SegmentBytes: 64, MinSegmentBytes: 8, Depth: 2}
	for _, size := range []int{3, 4, 5, 8} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			checkAllReduce[float32](t, size, 1001, opt, false, true)
			checkAllReduce[int64](t, size, 1001, opt, false, true)
		})
	}
}

// The same over transport.Links, as a program that brings its own
// connections (here in-process pipes) but not a communicator would run it.
func TestAllReduceOverTransportLinks(t *testing.T) {
	for _, size := range []int{1, 2, 3, 5} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			checkAllReduce[float32](t, size, 1001, smallPieces, true, false)
			checkAllReduce[float64](t, size, 33, ring.Options{}, true, false)
		})
	}
	t.Run("bidirectional", func(t *testing.T) {
		checkAllReduce[float32](t, 4, 1001, ring.Options{SegmentBytes: 64, MinSegmentBytes: 8, Depth: 2}, true, true)
	})
}

func TestReduceScatterAndAllGather(t *testing.T) {
	for size := 1; size <= 8; size++ {
		for _, block := range []int{0, 1, 5, 33} {
			rs := rings(t, size, smallPieces, false).rs
			send := make([][]int64, size)
			recv := make([][]int64, size)
			for r := range size {
				send[r] = make([]int64, size*block)
				for i := range send[r] {
					send[r][i] = input[int64](r, i, false)
				}
				recv[r] = make([]int64, block)
			}
			onEveryRank(t, size, func(r int) error {
				return ring.ReduceScatter(rs[r], send[r], recv[r], ring.Sum[int64]())
			})
			for r := range size {
				for i := range block {
					var want int64
					for q := range size {
						want += input[int64](q, r*block+i, false)
					}
					require.Equal(t, want, recv[r][i], "size=%d block=%d rank %d element %d", size, block, r, i)
				}
			}
			// Gather the reduced blocks back: every rank ends with the
			// whole reduced vector.
			all := make([][]int64, size)
			for r := range size {
				all[r] = make([]int64, size*block)
			}
			onEveryRank(t, size, func(r int) error { return ring.AllGather(rs[r], recv[r], all[r]) })
			for r := range size {
				assert.Equal(t, all[0], all[r], "size=%d block=%d rank %d", size, block, r)
				for q := range size {
					assert.Equal(t, recv[q], all[r][q*block:(q+1)*block])
				}
			}
			// In place: each rank's send is its own block of recv.
			inPlace := make([][]int64, size)
			for r := range size {
				inPlace[r] = make([]int64, size*block)
				copy(inPlace[r][r*block:], recv[r])
			}
			onEveryRank(t, size, func(r int) error {
				return ring.AllGather(rs[r], inPlace[r][r*block:(r+1)*block], inPlace[r])
			})
			for r := range size {
				assert.Equal(t, all[r], inPlace[r], "in place: size=%d block=%d rank %d", size, block, r)
			}
		}
	}
}

// ReduceScatterChunks then AllGatherChunks, on vectors of any length, is
// an AllReduce: the same bits as AllReduce itself (the same chunks, reduced
// in the same order).
func TestReduceScatterAndAllGatherChunks(t *testing.T) {
	for size := 1; size <= 7; size++ {
		for _, n := range []int{0, 1, size - 1, size + 1, 97, 1001} {
			if n < 0 {
				continue
			}
			rs := rings(t, size, smallPieces, false).rs
			viaChunks := make([][]float32, size)
			whole := make([][]float32, size)
			for r := range size {
				viaChunks[r] = make([]float32, n)
				for i := range viaChunks[r] {
					viaChunks[r][i] = float32(math.Sin(float64(r*n+i))) / 3
				}
				whole[r] = append([]float32(nil), viaChunks[r]...)
			}
			onEveryRank(t, size, func(r int) error {
				if err := ring.ReduceScatterChunks(rs[r], viaChunks[r], ring.Sum[float32]()); err != nil {
					return err
				}
				return ring.AllGatherChunks(rs[r], viaChunks[r])
			})
			onEveryRank(t, size, func(r int) error { return ring.AllReduce(rs[r], whole[r], ring.Sum[float32]()) })
			for r := range size {
				require.Equal(t, bits(whole[0]), bits(viaChunks[r]), "size=%d n=%d rank %d", size, n, r)
			}
		}
	}
}

func TestBroadcastFromEveryRoot(t *testing.T) {
	for size := 1; size <= 6; size++ {
		for root := range size {
			for _, count := range []int{0, 1, 101} {
				tr := rings(t, size, smallPieces, false)
				rs, left, right := tr.rs, tr.left, tr.right
				bufs := make([][]float64, size)
				for r := range size {
					bufs[r] = make([]float64, count)
					if r == root {
						for i := range bufs[r] {
							bufs[r][i] = float64(i) + 0.5
						}
					}
				}
				last := (root + size - 1) % size
				onEveryRank(t, size, func(r int) error {
					var ackFrom, ackTo link.Link
					if r == root {
						ackFrom = left[r] // the last rank of the chain is root's left neighbour
					}
					if r == last {
						ackTo = right[r]
					}
					return ring.Broadcast(rs[r], bufs[r], root, ackFrom, ackTo)
				})
				for r := range size {
					require.Equal(t, bufs[root], bufs[r], "size=%d root=%d count=%d rank %d", size, root, count, r)
				}
			}
		}
	}
}

// A compressed ring with a lossless codec gives the bits of the plain one.
func TestCompressedLosslessMatchesPlain(t *testing.T) {
	const size, count = 3, 600_000 // 800 KB chunks, in pieces of 512 KiB and less
	for _, codec := range []ring.Codec{ring.S2, ring.Zstd} {
		t.Run(codec.String(), func(t *testing.T) {
			rs := rings(t, size, ring.Options{}, false).rs
			plain := make([][]float32, size)
			packed := make([][]float32, size)
			for r := range size {
				plain[r] = make([]float32, count)
				for i := range plain[r] {
					plain[r][i] = float32(i%5*r) * 0.25 // compressible, exact
				}
				packed[r] = append([]float32(nil), plain[r]...)
			}
			onEveryRank(t, size, func(r int) error { return ring.AllReduce(rs[r], plain[r], ring.Sum[float32]()) })
			zs := make([]*ring.Compressed, size)
			for r := range size {
				z, err := ring.NewCompressed(rs[r], codec)
				require.NoError(t, err)
				t.Cleanup(z.Close)
				require.Equal(t, codec, z.Codec())
				zs[r] = z
			}
			onEveryRank(t, size, func(r int) error {
				return ring.AllReduceCompressed(zs[r], packed[r], ring.Sum[float32]())
			})
			for r := range size {
				require.Equal(t, bits(plain[0]), bits(packed[r]), "rank %d", r)
			}
			st := zs[0].Stats()
			assert.Positive(t, st.Compressed, "the data compresses")
			assert.Less(t, st.WireBytes, st.RawBytes)
		})
	}
}

// A lossy codec refuses a vector it cannot encode, with ErrCodec.
func TestCompressedLossyNeedsFloat32(t *testing.T) {
	rs := rings(t, 2, ring.Options{}, false).rs
	z, err := ring.NewCompressed(rs[0], ring.BF16)
	require.NoError(t, err)
	defer z.Close()
	err = ring.AllReduceCompressed(z, make([]int32, 8), ring.Sum[int32]())
	require.ErrorIs(t, err, ring.ErrCodec)
}
