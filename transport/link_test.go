package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Ranks of the two ends in link tests: end a is rank rankA, end b is rank rankB.
const (
	rankA = 5
	rankB = 3
)

var linkHdr = Header{Comm: 11, Seq: 42, Sig: Signature{Kind: 2, DType: 3, Op: 1, Root: -1, Count: 1000}}

type linkEnd struct {
	l    *Link
	fail *Failure
	s    Stream
}

// newLinkPairOver connects two Links over the two ends of a stream, each with
// its own Failure. Both are shut down when the test ends.
func newLinkPairOver(t *testing.T, sa, sb Stream) (a, b linkEnd) {
	t.Helper()
	a = linkEnd{fail: NewFailure(nil), s: sa}
	b = linkEnd{fail: NewFailure(nil), s: sb}
	a.l = NewLink(rankB, NewConn(sa), a.fail, nil)
	b.l = NewLink(rankA, NewConn(sb), b.fail, nil)
	t.Cleanup(func() {
		a.l.Shutdown(false, 0)
		b.l.Shutdown(false, 0)
	})
	return a, b
}

func newLinkPair(t *testing.T) (a, b linkEnd) {
	t.Helper()
	sa, sb := Pipe()
	return newLinkPairOver(t, sa, sb)
}

func beginBoth(a, b linkEnd, hdr Header) {
	a.l.Begin(context.Background(), hdr, nil)
	b.l.Begin(context.Background(), hdr, nil)
}

// postThenWait posts dst and waits for it, returning the first error.
func postThenWait(l *Link, dst []byte) error {
	if err := l.Post(dst); err != nil {
		return err
	}
	return l.Wait()
}

func TestLinkAccessors(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	assert.Equal(t, rankB, a.l.Peer())
	assert.Equal(t, rankA, b.l.Peer())
	assert.Equal(t, a.s, a.l.Conn().Stream())
}

func TestLinkPostWaitReceivesPayload(t *testing.T) {
	for _, sk := range streamKinds {
		t.Run(sk.name, func(t *testing.T) {
			noLeaks(t)
			sa, sb := sk.pair(t)
			a, b := newLinkPairOver(t, sa, sb)
			beginBoth(a, b, linkHdr)
			for _, n := range []int{0, 1, 4096, 1 << 20} {
				src := pattern(n, byte(n))
				guard := filled(n+64, 0xEE)
				dst := guard[32 : 32+n : 32+n]
				require.NoError(t, b.l.Post(dst))
				tk, err := a.l.Send(src)
				require.NoError(t, err)
				require.NoError(t, b.l.Wait())
				require.Equal(t, src, dst, "%d-byte payload", n)
				require.True(t, allEqual(guard[:32], 0xEE) && allEqual(guard[32+n:], 0xEE), "bytes outside the posted buffer changed")
				require.NoError(t, a.l.Flush(tk))
			}
			assert.NoError(t, a.fail.Err())
			assert.NoError(t, b.fail.Err())
		})
	}
}

func TestLinkNilPost(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	beginBoth(a, b, linkHdr)
	require.NoError(t, b.l.Post(nil))
	_, err := a.l.Send(nil)
	require.NoError(t, err)
	require.NoError(t, b.l.Wait())
	require.NoError(t, a.l.FlushAll())
}

func TestLinkManyInFlightCompleteInOrder(t *testing.T) {
	const frames = LinkDepth - 1
	size := func(i int) int { return 1 + (i*613)%5000 }
	for _, order := range []string{"posts first", "sends first"} {
		t.Run(order, func(t *testing.T) {
			noLeaks(t)
			a, b := newLinkPair(t)
			beginBoth(a, b, linkHdr)
			dsts := make([][]byte, frames)
			post := func() {
				for i := range dsts {
					dsts[i] = make([]byte, size(i))
					require.NoError(t, b.l.Post(dsts[i]))
				}
			}
			var last uint64
			send := func() {
				for i := 0; i < frames; i++ {
					tk, err := a.l.Send(pattern(size(i), byte(i)))
					require.NoError(t, err)
					require.Equal(t, uint64(i+1), tk, "tickets count the frames sent")
					last = tk
				}
			}
			if order == "posts first" {
				post()
				send()
			} else {
				send()
				post()
			}
			for i := range dsts {
				require.NoError(t, b.l.Wait(), "receive %d", i)
			}
			for i := range dsts {
				require.Equal(t, pattern(size(i), byte(i)), dsts[i], "receive %d got another frame's bytes", i)
			}
			require.NoError(t, a.l.Flush(last))
			require.NoError(t, a.l.FlushAll())
			assert.NoError(t, b.fail.Err())
		})
	}
}

func TestLinkFullDuplex(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	beginBoth(a, b, linkHdr)
	const n = 256 << 10
	fromA, fromB := pattern(n, 1), pattern(n, 2)
	atA, atB := make([]byte, n), make([]byte, n)
	require.NoError(t, a.l.Post(atA))
	require.NoError(t, b.l.Post(atB))
	_, err := a.l.Send(fromA)
	require.NoError(t, err)
	_, err = b.l.Send(fromB)
	require.NoError(t, err)
	require.NoError(t, a.l.Wait())
	require.NoError(t, b.l.Wait())
	require.NoError(t, a.l.FlushAll())
	require.NoError(t, b.l.FlushAll())
	assert.Equal(t, fromB, atA)
	assert.Equal(t, fromA, atB)
}

func TestLinkOperationsInSequence(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	for seq := uint64(1); seq <= 5; seq++ {
		hdr := linkHdr
		hdr.Seq = seq
		beginBoth(a, b, hdr)
		dst := make([]byte, 100)
		require.NoError(t, b.l.Post(dst))
		_, err := a.l.Send(pattern(100, byte(seq)))
		require.NoError(t, err)
		require.NoError(t, b.l.Wait(), "op %d", seq)
		require.Equal(t, pattern(100, byte(seq)), dst)
		a.l.End()
		b.l.End()
	}
}

func TestLinkFlushWaitsForTheWrite(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	beginBoth(a, b, linkHdr)
	// Nothing is posted at b, so b reads the header and waits: over the
	// unbuffered pipe the payload write cannot complete yet.
	tk, err := a.l.Send(pattern(1000, 9))
	require.NoError(t, err)
	flushed := make(chan error, 1)
	go func() { flushed <- a.l.Flush(tk) }()
	select {
	case err := <-flushed:
		t.Fatalf("Flush returned (%v) before the peer could take the frame", err)
	default:
	}
	dst := make([]byte, 1000)
	require.NoError(t, postThenWait(b.l, dst))
	require.NoError(t, recvErr(t, flushed, "Flush"))
	assert.Equal(t, pattern(1000, 9), dst)
}

func TestLinkMismatch(t *testing.T) {
	const n = 16
	cases := []struct {
		name   string
		mutate func(*Header)
	}{
		{"comm", func(h *Header) { h.Comm++ }},
		{"seq", func(h *Header) { h.Seq++ }},
		{"kind", func(h *Header) { h.Sig.Kind++ }},
		{"dtype", func(h *Header) { h.Sig.DType++ }},
		{"op", func(h *Header) { h.Sig.Op++ }},
		{"root", func(h *Header) { h.Sig.Root = 0 }},
		{"count", func(h *Header) { h.Sig.Count++ }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			a, b := newLinkPair(t)
			sent := linkHdr
			tc.mutate(&sent)
			a.l.Begin(context.Background(), sent, nil)
			b.l.Begin(context.Background(), linkHdr, nil)
			guard := filled(n+32, 0xEE)
			dst := guard[16 : 16+n : 16+n]
			require.NoError(t, b.l.Post(dst))
			_, err := a.l.Send(pattern(n, 1))
			require.NoError(t, err)

			err = b.l.Wait()
			require.ErrorIs(t, err, ErrMismatch)
			var mm *MismatchError
			require.True(t, errors.As(err, &mm), "%T is not a *MismatchError", err)
			got, want := sent, linkHdr
			got.Type, got.Index, got.Len = Data, 0, n
			want.Type, want.Index, want.Len = Data, 0, n
			assert.Equal(t, rankA, mm.Peer)
			assert.Equal(t, got, mm.Got)
			assert.Equal(t, want, mm.Want)
			assert.True(t, allEqual(guard, 0xEE), "the posted buffer was written despite the mismatch")
			// The reader closes the link before it records the failure, so
			// wait for the record rather than read it at once.
			waitDone(t, b.fail.Done(), "b's failure")
			assert.ErrorIs(t, b.fail.Err(), ErrMismatch, "a mismatch fails the communicator")
			assert.Contains(t, err.Error(), fmt.Sprintf("from rank %d", rankA))
		})
	}

	t.Run("len", func(t *testing.T) {
		noLeaks(t)
		a, b := newLinkPair(t)
		beginBoth(a, b, linkHdr)
		guard := filled(n+32, 0xEE)
		dst := guard[16 : 16+n : 16+n]
		require.NoError(t, b.l.Post(dst))
		_, err := a.l.Send(pattern(n+1, 1)) // one byte more than posted
		require.NoError(t, err)
		err = b.l.Wait()
		var mm *MismatchError
		require.True(t, errors.As(err, &mm), "%v", err)
		assert.Equal(t, uint32(n+1), mm.Got.Len)
		assert.Equal(t, uint32(n), mm.Want.Len)
		assert.True(t, allEqual(guard, 0xEE), "the posted buffer was written despite the mismatch")
	})

	t.Run("index", func(t *testing.T) {
		noLeaks(t)
		a, b := newLinkPair(t)
		beginBoth(a, b, linkHdr)
		_, err := a.l.Send(pattern(n, 1))
		require.NoError(t, err)
		_, err = a.l.Send(pattern(n, 2))
		require.NoError(t, err)
		require.NoError(t, postThenWait(b.l, make([]byte, n)))
		// b restarts the same operation: it now expects frame 0 again and
		// receives frame 1.
		b.l.Begin(context.Background(), linkHdr, nil)
		dst := filled(n, 0xEE)
		err = postThenWait(b.l, dst)
		var mm *MismatchError
		require.True(t, errors.As(err, &mm), "%v", err)
		assert.Equal(t, uint32(1), mm.Got.Index)
		assert.Equal(t, uint32(0), mm.Want.Index)
		assert.True(t, allEqual(dst, 0xEE))
	})
}

func TestLinkPeerLost(t *testing.T) {
	for _, sk := range streamKinds {
		t.Run(sk.name, func(t *testing.T) {
			noLeaks(t)
			sa, sb := sk.pair(t)
			a, b := newLinkPairOver(t, sa, sb)
			beginBoth(a, b, linkHdr)
			dst := filled(64, 0xEE)
			require.NoError(t, b.l.Post(dst))
			waited := make(chan error, 1)
			go func() { waited <- b.l.Wait() }()

			require.NoError(t, a.s.Close()) // rank A vanishes without a bye

			err := recvErr(t, waited, "Wait")
			require.ErrorIs(t, err, ErrPeerLost)
			var pe *PeerError
			require.True(t, errors.As(err, &pe), "%T is not a *PeerError", err)
			assert.Equal(t, rankA, pe.Peer)
			assert.Contains(t, err.Error(), fmt.Sprintf("rank %d", rankA))
			waitDone(t, b.fail.Done(), "b's failure")
			assert.ErrorIs(t, b.fail.Err(), ErrPeerLost, "losing a peer fails the communicator")
			assert.True(t, allEqual(dst, 0xEE))

			// Later receives fail at once with the same error.
			assert.ErrorIs(t, postThenWait(b.l, make([]byte, 8)), ErrPeerLost)
		})
	}
}

func TestLinkByeClosesWithoutFailure(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	beginBoth(a, b, linkHdr)

	a.l.Shutdown(true, testTimeout) // returns once the bye was written

	err := postThenWait(b.l, make([]byte, 8))
	require.ErrorIs(t, err, ErrPeerClosed)
	var pe *PeerError
	require.True(t, errors.As(err, &pe), "%T is not a *PeerError", err)
	assert.Equal(t, rankA, pe.Peer)
	assert.False(t, errors.Is(err, ErrPeerLost))

	// Again: the link stays closed.
	assert.ErrorIs(t, postThenWait(b.l, make([]byte, 8)), ErrPeerClosed)

	b.l.Shutdown(true, testTimeout) // the reader has exited once this returns
	assert.NoError(t, b.fail.Err(), "a normal close must not fail the peer's communicator")
	assert.NoError(t, a.fail.Err())
}

func TestLinkRemoteAbort(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	beginBoth(a, b, linkHdr)
	dst := filled(32, 0xEE)
	require.NoError(t, b.l.Post(dst))

	reason := "rank 5: AllReduce op #42 timed out"
	ok := a.l.Conn().TryWriteControl(&Header{Type: Abort, Comm: linkHdr.Comm}, append([]byte{7}, reason...), testTimeout)
	require.True(t, ok)

	err := b.l.Wait()
	require.ErrorIs(t, err, ErrRemoteAbort)
	var ra *RemoteAbortError
	require.True(t, errors.As(err, &ra), "%T is not a *RemoteAbortError", err)
	assert.Equal(t, rankA, ra.Peer)
	assert.Equal(t, byte(7), ra.Code)
	assert.Equal(t, reason, ra.Reason)
	assert.Contains(t, err.Error(), reason)

	waitDone(t, b.fail.Done(), "b's failure")
	require.True(t, errors.As(b.fail.Err(), &ra))
	assert.Equal(t, reason, ra.Reason)
	assert.True(t, allEqual(dst, 0xEE))
}

func TestLinkRemoteAbortEmptyAndLongReason(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload []byte
		code    byte
		reason  string
	}{
		{"empty", nil, 0, ""},
		{"longer than the control limit", append([]byte{9}, filled(2*maxControlPayload, 'x')...), 9, string(filled(maxControlPayload-1, 'x'))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			a, b := newLinkPair(t)
			require.True(t, a.l.Conn().TryWriteControl(&Header{Type: Abort}, tc.payload, testTimeout))
			waitDone(t, b.fail.Done(), "b's failure")
			var ra *RemoteAbortError
			require.True(t, errors.As(b.fail.Err(), &ra), "%v", b.fail.Err())
			assert.Equal(t, tc.code, ra.Code)
			assert.Equal(t, tc.reason, ra.Reason)
		})
	}
}

// A control frame that announces a payload is refused: the reader reads no
// payload of a heartbeat, bye or probe, so the bytes after its header would
// otherwise be taken for the next frame. Here they hold a well-formed data
// frame that fits the posted receive exactly: it must not be delivered.
func TestLinkControlFrameWithAPayloadIsRefused(t *testing.T) {
	for _, typ := range []FrameType{Heartbeat, Bye, Probe} {
		t.Run(typ.String(), func(t *testing.T) {
			noLeaks(t)
			local, remote := Pipe()
			fail := NewFailure(nil)
			l := NewLink(rankA, NewConn(local), fail, nil)
			defer l.Shutdown(false, 0)
			l.Begin(context.Background(), linkHdr, nil)
			dst := filled(16, 0xEE)
			require.NoError(t, l.Post(dst))

			hidden := linkHdr
			hidden.Type = Data
			smuggled := frame(hidden, pattern(16, 1))
			control := Header{Type: typ, Comm: linkHdr.Comm, Seq: linkHdr.Seq, Sig: linkHdr.Sig, Len: uint32(len(smuggled))}
			b := encodeHeader(control)
			go func() {
				_, _ = remote.Write(append(b[:], smuggled...))
				_ = remote.Close()
			}()

			err := l.Wait()
			require.ErrorIs(t, err, ErrProtocol)
			require.ErrorContains(t, err, "carries none")
			waitDone(t, fail.Done(), "the failure")
			require.ErrorIs(t, fail.Err(), ErrProtocol)
			assert.True(t, allEqual(dst, 0xEE), "the smuggled frame was received")
		})
	}
}

func TestLinkContextCanceled(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	a.l.Begin(context.Background(), linkHdr, nil)
	b.l.Begin(ctx, linkHdr, nil)
	require.NoError(t, b.l.Post(make([]byte, 8)))
	cancel()
	err := b.l.Wait()
	require.ErrorIs(t, err, context.Canceled)
	assert.NoError(t, b.fail.Err(), "the link leaves aborting to its caller")
}

func TestLinkContextCause(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("training step abandoned")
	a.l.Begin(context.Background(), linkHdr, nil)
	b.l.Begin(ctx, linkHdr, nil)
	require.NoError(t, b.l.Post(make([]byte, 8))) // a sends nothing
	// b's frame cannot be written while a has not posted a receive for it.
	tk, err := b.l.Send(make([]byte, 100))
	require.NoError(t, err)
	cancel(cause)
	assert.ErrorIs(t, b.l.Wait(), cause)
	assert.ErrorIs(t, b.l.Flush(tk), cause)
	assert.NoError(t, b.fail.Err())
}

func TestLinkExpire(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	expire := make(chan time.Time, 1)
	a.l.Begin(context.Background(), linkHdr, nil)
	b.l.Begin(context.Background(), linkHdr, expire)
	require.NoError(t, b.l.Post(make([]byte, 8))) // a sends nothing
	// b's frame cannot be written while a has not posted a receive for it.
	tk, err := b.l.Send(make([]byte, 100))
	require.NoError(t, err)
	expire <- time.Now()
	require.ErrorIs(t, b.l.Wait(), ErrTimeout)
	expire <- time.Now()
	require.ErrorIs(t, b.l.Flush(tk), ErrTimeout)
	assert.NoError(t, b.fail.Err(), "the link leaves aborting to its caller")
}

func TestLinkCallsAfterFailure(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	beginBoth(a, b, linkHdr)
	cause := errors.New("another link broke")
	b.fail.Fail(cause)
	assert.ErrorIs(t, postThenWait(b.l, make([]byte, 8)), cause)
	tk, err := b.l.Send([]byte("x"))
	if err == nil {
		err = b.l.Flush(tk)
	}
	assert.ErrorIs(t, err, cause)
	assert.NoError(t, a.fail.Err())
}

// countGoroutines polls (yielding, never sleeping) until at most want
// goroutines run, and returns the last count.
func countGoroutines(want int) int {
	n := runtime.NumGoroutine()
	for i := 0; i < 100000 && n > want; i++ {
		runtime.Gosched()
		n = runtime.NumGoroutine()
	}
	return n
}

func TestLinkShutdownEndsGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	sa, sb := Pipe()
	fa, fb := NewFailure(nil), NewFailure(nil)
	a := NewLink(rankB, NewConn(sa), fa, nil)
	b := NewLink(rankA, NewConn(sb), fb, nil)
	require.Greater(t, runtime.NumGoroutine(), base)

	a.Begin(context.Background(), linkHdr, nil)
	b.Begin(context.Background(), linkHdr, nil)
	require.NoError(t, b.Post(make([]byte, 10)))
	_, err := a.Send(make([]byte, 10))
	require.NoError(t, err)
	require.NoError(t, b.Wait())

	a.Shutdown(true, testTimeout)
	b.Shutdown(true, testTimeout)
	a.Shutdown(true, testTimeout) // idempotent
	assert.LessOrEqual(t, countGoroutines(base), base, "goroutines of the links remain after Shutdown")
	assert.NoError(t, fa.Err())
	assert.NoError(t, fb.Err())
}

func TestLinkShutdownWithStuckPeer(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	beginBoth(a, b, linkHdr)
	// b never posts: a's sender stays blocked writing the payload.
	_, err := a.l.Send(make([]byte, 1<<16))
	require.NoError(t, err)
	start := time.Now()
	a.l.Shutdown(true, 20*time.Millisecond)
	assert.Less(t, time.Since(start), testTimeout, "Shutdown waits at most about grace for a stuck write")
	assert.NoError(t, a.fail.Err(), "a local shutdown is not a failure")
}

func TestLinkShutdownWakesWaiter(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	beginBoth(a, b, linkHdr)
	require.NoError(t, b.l.Post(make([]byte, 8)))
	waited := make(chan error, 1)
	go func() { waited <- b.l.Wait() }()
	b.l.Shutdown(false, 0)
	require.Error(t, recvErr(t, waited, "Wait"))
	assert.NoError(t, b.fail.Err(), "a local shutdown is not a failure")
}

// A schedule that posts more receives than LinkDepth without waiting breaks
// the Link's contract, but Shutdown must still return.
func TestLinkShutdownAfterTooManyPosts(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	beginBoth(a, b, linkHdr)
	const frames = LinkDepth + 1
	for i := 0; i < frames; i++ {
		require.NoError(t, b.l.Post(make([]byte, 4)))
		_, err := a.l.Send(pattern(4, byte(i)))
		require.NoError(t, err)
	}
	require.NoError(t, a.l.FlushAll()) // every frame was read by b's reader
	done := make(chan struct{})
	go func() {
		b.l.Shutdown(false, 0)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		// Unblock the reader so that the test ends cleanly, then fail.
		for i := 0; i < frames; i++ {
			_ = b.l.Wait()
		}
		<-done
		t.Fatal("Shutdown hung with more than LinkDepth completed receives not waited for")
	}
}

// TestLinkSidesOnTwoGoroutines drives each end's send side and receive side
// from goroutines of their own during one operation, as the two halves of a
// bidirectional ring do, with a slow channel that has already fired so that
// both sides take the slow path at once. Run under -race it checks that the
// sides share no unsynchronised state; it also checks that every frame
// arrives intact and in order, and that each side reports slowness once.
func TestLinkSidesOnTwoGoroutines(t *testing.T) {
	for _, kind := range streamKinds {
		t.Run(kind.name, func(t *testing.T) {
			noLeaks(t)
			sa, sb := kind.pair(t)
			slow := make(chan time.Time)
			close(slow) // fired before the operation begins: every wait sees it
			var mu sync.Mutex
			reports := map[string]int{} // "peer/what" -> OnSlow calls
			opt := LinkOptions{ProbeAfter: time.Millisecond, OnSlow: func(peer int, what string) {
				mu.Lock()
				reports[fmt.Sprintf("%d/%s", peer, what)]++
				mu.Unlock()
			}}
			fa, fb := NewFailure(nil), NewFailure(nil)
			a := NewLinkWith(rankB, NewConn(sa), fa, nil, opt)
			b := NewLinkWith(rankA, NewConn(sb), fb, nil, opt)
			t.Cleanup(func() {
				a.Shutdown(false, 0)
				b.Shutdown(false, 0)
			})
			a.BeginOp(context.Background(), linkHdr, nil, slow)
			b.BeginOp(context.Background(), linkHdr, nil, slow)

			const frames = 300
			size := func(i int) int { return 1 + (i*997)%(8<<10) }
			var wg sync.WaitGroup
			errs := make(chan error, 4)
			send := func(l *Link, seed byte) {
				defer wg.Done()
				var last uint64
				for i := range frames {
					tk, err := l.Send(pattern(size(i), seed+byte(i)))
					if err != nil {
						errs <- fmt.Errorf("send %d: %w", i, err)
						return
					}
					last = tk
					// Flush now and then, as a schedule reusing a slot does.
					if i%7 == 0 {
						if err := l.Flush(tk); err != nil {
							errs <- fmt.Errorf("flush %d: %w", i, err)
							return
						}
					}
				}
				if err := l.Flush(last); err != nil {
					errs <- err
					return
				}
				errs <- l.FlushAll()
			}
			recv := func(l *Link, seed byte) {
				defer wg.Done()
				const ahead = 4 // receives posted ahead, fewer than LinkDepth
				dsts := make([][]byte, frames)
				for i := range dsts {
					dsts[i] = make([]byte, size(i))
				}
				for i := range frames + ahead {
					if i < frames {
						if err := l.Post(dsts[i]); err != nil {
							errs <- fmt.Errorf("post %d: %w", i, err)
							return
						}
					}
					if j := i - ahead; j >= 0 {
						if err := l.Wait(); err != nil {
							errs <- fmt.Errorf("wait %d: %w", j, err)
							return
						}
						if !bytes.Equal(pattern(size(j), seed+byte(j)), dsts[j]) {
							errs <- fmt.Errorf("frame %d arrived with other bytes", j)
							return
						}
					}
				}
				errs <- nil
			}
			wg.Add(4)
			go send(a, 1)
			go recv(a, 2)
			go send(b, 2)
			go recv(b, 1)
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			a.End()
			b.End()
			assert.NoError(t, fa.Err())
			assert.NoError(t, fb.Err())
			mu.Lock()
			defer mu.Unlock()
			for k, n := range reports {
				assert.Equal(t, 1, n, "OnSlow %s: once per side and operation", k)
			}
		})
	}
}

// TestLinkInterrupt checks that Interrupt wakes a blocked receive and a
// blocked flush on two goroutines, makes later calls of the operation fail
// too, leaves the communicator alone, and is forgotten by the next BeginOp.
func TestLinkInterrupt(t *testing.T) {
	noLeaks(t)
	a, b := newLinkPair(t)
	beginBoth(a, b, linkHdr)
	// b posts nothing and sends nothing: a's receive cannot complete, and
	// over the unbuffered pipe neither can a's send.
	require.NoError(t, a.l.Post(make([]byte, 8)))
	tk, err := a.l.Send(pattern(1000, 3))
	require.NoError(t, err)
	waited, flushed := make(chan error, 1), make(chan error, 1)
	go func() { waited <- a.l.Wait() }()
	go func() { flushed <- a.l.Flush(tk) }()
	cause := errors.New("the other half failed")
	a.l.Interrupt(cause)
	a.l.Interrupt(errors.New("a second interrupt is ignored"))
	for what, ch := range map[string]chan error{"wait": waited, "flush": flushed} {
		err := recvErr(t, ch, what)
		assert.ErrorIs(t, err, ErrInterrupted, what)
		assert.ErrorIs(t, err, cause, what)
	}
	_, err = a.l.Send([]byte("x"))
	assert.ErrorIs(t, err, cause, "a send after the interrupt")
	assert.ErrorIs(t, a.l.Post(make([]byte, 1)), cause, "a post after the interrupt")
	assert.NoError(t, a.fail.Err(), "the link leaves aborting to its caller")

	a.l.End()
	a.l.Begin(context.Background(), linkHdr, nil)
	assert.NoError(t, a.l.Post(make([]byte, 1)), "the next operation is not interrupted")
}

// FuzzFrameStream feeds arbitrary bytes as the peer's side of a link that has
// a receive posted. The link must not panic, must end with an error (a failed
// communicator, or a normal close if the bytes hold a bye), must never write
// outside the posted buffer and must end its goroutines on Shutdown.
func FuzzFrameStream(f *testing.F) {
	for _, seed := range frameStreamSeeds() {
		f.Add(seed.postLen, seed.data)
	}
	f.Fuzz(func(t *testing.T, postLen uint8, data []byte) {
		local, remote := Pipe()
		fail := NewFailure(nil)
		l := NewLink(1, NewConn(local), fail, nil)
		l.Begin(context.Background(), fuzzLinkHdr, nil)
		fed := make(chan struct{})
		go func() {
			defer close(fed)
			_, _ = remote.Write(data)
			_ = remote.Close()
		}()

		const pad = 32
		n := int(postLen)
		guard := make([]byte, pad+n+pad)
		var err error
		var delivered [][]byte
		// Every completed receive consumes at least a header, so the input
		// runs out after at most len(data)/HeaderSize receives.
		for i := 0; i <= len(data)/HeaderSize+1 && err == nil; i++ {
			for j := range guard {
				guard[j] = 0xA5
			}
			dst := guard[pad : pad+n : pad+n]
			if err = l.Post(dst); err == nil {
				err = l.Wait()
			}
			if err == nil {
				delivered = append(delivered, bytes.Clone(dst))
			}
			if !allEqual(guard[:pad], 0xA5) || !allEqual(guard[pad+n:], 0xA5) {
				t.Fatalf("bytes outside the posted buffer changed: %x", guard)
			}
			var mm *MismatchError
			if errors.As(err, &mm) && !allEqual(dst, 0xA5) {
				t.Fatalf("the posted buffer was written despite %v", err)
			}
		}
		require.Error(t, err, "the link received more frames than the input holds")
		// What was delivered is what the input holds, frame by frame.
		sent := dataPayloads(data)
		require.LessOrEqual(t, len(delivered), len(sent), "the link delivered frames the input does not hold")
		for i, d := range delivered {
			require.Equal(t, sent[i], d, "frame %d", i)
		}
		l.Shutdown(false, 0) // after this the reader has recorded its verdict
		<-fed

		if fail.Err() == nil {
			// Only a bye from the peer ends a link without failing it.
			require.ErrorIs(t, err, ErrPeerClosed)
		} else {
			ferr := fail.Err()
			require.True(t, errors.Is(ferr, ErrProtocol) || errors.Is(ferr, ErrPeerLost) ||
				errors.Is(ferr, ErrMismatch) || errors.Is(ferr, ErrRemoteAbort), "unexpected failure: %v", ferr)
		}
	})
}

// dataPayloads reads a byte stream by the wire format's rules, on its own
// (not with Decode): the payloads of its data frames, in order, up to the
// first thing that is not a well-formed frame, or an abort or bye. Bye,
// heartbeat and probe frames carry no payload; a length on one is not
// well-formed.
func dataPayloads(b []byte) [][]byte {
	var out [][]byte
	for len(b) >= HeaderSize {
		if b[0] != 'G' || b[1] != 'R' || b[2] != 1 || b[19] != 0 {
			break
		}
		n := int(binary.LittleEndian.Uint32(b[36:]))
		switch FrameType(b[3]) {
		case Data:
			if n > MaxPayload || len(b) < HeaderSize+n {
				return out
			}
			out = append(out, b[HeaderSize:HeaderSize+n])
		case Heartbeat, Probe:
			if n != 0 {
				return out
			}
		default: // abort, bye, or no frame at all
			return out
		}
		b = b[HeaderSize+n:]
	}
	return out
}

var fuzzLinkHdr = Header{Comm: 1, Seq: 2, Sig: Signature{Kind: 3, DType: 4, Op: 5, Root: 6, Count: 7}}

type frameStreamSeed struct {
	postLen uint8
	data    []byte
}

func frame(h Header, payload []byte) []byte {
	h.Len = uint32(len(payload))
	b := encodeHeader(h)
	return append(b[:], payload...)
}

// heartbeatCarrying is the header of a heartbeat that announces payload
// as its own (which no heartbeat may).
func heartbeatCarrying(payload []byte) []byte {
	b := encodeHeader(Header{Type: Heartbeat, Len: uint32(len(payload))})
	return b[:]
}

func frameStreamSeeds() []frameStreamSeed {
	data := fuzzLinkHdr
	data.Type = Data
	next := data
	next.Index = 1
	wrongSeq := data
	wrongSeq.Seq = 3
	valid := frame(data, pattern(16, 1))
	return []frameStreamSeed{
		{16, valid},
		{16, append(append(bytes.Clone(valid), frame(next, pattern(16, 2))...), frame(Header{Type: Bye}, nil)...)},
		{16, append(bytes.Clone(valid), frame(Header{Type: Abort}, append([]byte{3}, "rank 1 gave up"...))...)},
		{16, frame(wrongSeq, pattern(16, 1))},
		{4, valid},
		{0, frame(data, nil)},
		{16, valid[:HeaderSize+5]},
		{16, []byte(httpRequest)},
		// A heartbeat announcing a payload that is a valid frame: refused.
		{16, append(heartbeatCarrying(valid), valid...)},
	}
}

// holdPayloadWrite is a Stream whose Write of a payload of size bytes
// writes it through and then, before it returns, waits for release: the
// peer has every byte while the writer's call is still in progress.
type holdPayloadWrite struct {
	Stream
	size    int
	written chan struct{}
	release chan struct{}
}

func (h *holdPayloadWrite) Write(p []byte) (int, error) {
	n, err := h.Stream.Write(p)
	if len(p) == h.size {
		close(h.written)
		<-h.release
	}
	return n, err
}

// An interrupt (the peer closed its communicator right after it received
// the frame) that comes while the frame's write is still returning does not
// turn a delivered frame into a failed Flush: the peer has it.
func TestLinkFlushOfADeliveredFrameSurvivesAnInterrupt(t *testing.T) {
	noLeaks(t)
	sa, sb := Pipe()
	hold := &holdPayloadWrite{Stream: sa, size: 1000, written: make(chan struct{}), release: make(chan struct{})}
	a, b := newLinkPairOver(t, hold, sb)
	beginBoth(a, b, linkHdr)
	tk, err := a.l.Send(pattern(1000, 4))
	require.NoError(t, err)
	flushed := make(chan error, 1)
	go func() { flushed <- a.l.Flush(tk) }()
	dst := make([]byte, 1000)
	require.NoError(t, postThenWait(b.l, dst))
	assert.Equal(t, pattern(1000, 4), dst)
	<-hold.written
	a.l.Interrupt(&PeerError{Peer: rankB, Err: ErrPeerClosed})
	close(hold.release)
	require.NoError(t, recvErr(t, flushed, "Flush"))
}
