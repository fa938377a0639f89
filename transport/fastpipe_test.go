package transport

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fastPipe returns the ends of an in-memory stream with a buffer of cap
// bytes per direction that, like a shared-memory ring, can take a frame
// without waiting (TryWrite): Links over it write small frames on their
// callers' goroutines. Deadlines are not kept.
func fastPipe(capacity int) (Stream, Stream) {
	ab, ba := newPipeDir(capacity), newPipeDir(capacity)
	return &fastEnd{in: ba, out: ab}, &fastEnd{in: ab, out: ba}
}

type pipeDir struct {
	mu       sync.Mutex
	cond     *sync.Cond
	buf      []byte
	capacity int
	closed   bool // by either end
}

func newPipeDir(capacity int) *pipeDir {
	d := &pipeDir{capacity: capacity}
	d.cond = sync.NewCond(&d.mu)
	return d
}

type fastEnd struct {
	in, out *pipeDir
	once    sync.Once
	gone    bool // this end closed (under in.mu)
}

func (e *fastEnd) Read(p []byte) (int, error) {
	d := e.in
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.buf) == 0 && !d.closed {
		d.cond.Wait()
	}
	if e.gone {
		return 0, net.ErrClosed
	}
	if len(d.buf) == 0 {
		return 0, io.EOF
	}
	n := copy(p, d.buf)
	d.buf = d.buf[n:]
	d.cond.Broadcast()
	return n, nil
}

func (e *fastEnd) Write(p []byte) (int, error) {
	d := e.out
	d.mu.Lock()
	defer d.mu.Unlock()
	done := 0
	for done < len(p) {
		for len(d.buf) == d.capacity && !d.closed {
			d.cond.Wait()
		}
		if d.closed {
			return done, io.ErrClosedPipe
		}
		n := min(len(p)-done, d.capacity-len(d.buf))
		d.buf = append(d.buf, p[done:done+n]...)
		done += n
		d.cond.Broadcast()
	}
	return done, nil
}

func (e *fastEnd) TryWrite(a, b []byte) (bool, error) {
	d := e.out
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false, io.ErrClosedPipe
	}
	if d.capacity-len(d.buf) < len(a)+len(b) {
		return false, nil
	}
	d.buf = append(append(d.buf, a...), b...)
	d.cond.Broadcast()
	return true, nil
}

func (e *fastEnd) Close() error {
	e.once.Do(func() {
		for _, d := range []*pipeDir{e.in, e.out} {
			d.mu.Lock()
			d.closed = true
			if d == e.in {
				e.gone = true
			}
			d.cond.Broadcast()
			d.mu.Unlock()
		}
	})
	return nil
}

func (e *fastEnd) SetDeadline(time.Time) error      { return nil }
func (e *fastEnd) SetReadDeadline(time.Time) error  { return nil }
func (e *fastEnd) SetWriteDeadline(time.Time) error { return nil }

// Links over a stream that writes at once (shared memory is one) do what
// they do over a pipe: frames in order, in both directions, the tickets of
// frames written on the caller's goroutine and by the sender mixed, a
// mismatch found before a payload byte lands, a closed peer seen.
func TestLinkOverAStreamThatWritesAtOnce(t *testing.T) {
	pair := func(t *testing.T) (linkEnd, linkEnd) {
		sa, sb := fastPipe(8 << 10) // some frames fit, some wait for room
		return newLinkPairOver(t, sa, sb)
	}
	t.Run("many in flight", func(t *testing.T) {
		noLeaks(t)
		a, b := pair(t)
		beginBoth(a, b, linkHdr)
		const frames = LinkDepth - 1
		size := func(i int) int { return (i * 1613) % (3 * inlineMax) } // inline and not, and empty
		dsts := make([][]byte, frames)
		for i := range dsts {
			dsts[i] = make([]byte, size(i))
			require.NoError(t, b.l.Post(dsts[i]))
		}
		var last uint64
		for i := range frames {
			tk, err := a.l.Send(pattern(size(i), byte(i)))
			require.NoError(t, err)
			require.Equal(t, uint64(i+1), tk, "tickets count the frames sent")
			last = tk
		}
		for i := range dsts {
			require.NoError(t, b.l.Wait(), "receive %d", i)
			require.Equal(t, pattern(size(i), byte(i)), dsts[i], "receive %d got another frame's bytes", i)
		}
		require.NoError(t, a.l.Flush(last))
	})
	t.Run("full duplex", func(t *testing.T) {
		noLeaks(t)
		a, b := pair(t)
		beginBoth(a, b, linkHdr)
		for round := range 50 {
			n := round * 331
			fromA, fromB := pattern(n, 1), pattern(n, 2)
			atA, atB := make([]byte, n), make([]byte, n)
			require.NoError(t, a.l.Post(atA))
			require.NoError(t, b.l.Post(atB))
			_, err := a.l.Send(fromA)
			require.NoError(t, err)
			_, err = b.l.Send(fromB)
			require.NoError(t, err)
			for _, l := range []*Link{a.l, b.l} {
				require.NoError(t, l.Wait())
				require.NoError(t, l.FlushAll())
			}
			require.Equal(t, fromB, atA, "round %d", round)
			require.Equal(t, fromA, atB, "round %d", round)
		}
	})
	t.Run("mismatch", func(t *testing.T) {
		a, b := pair(t)
		a.l.Begin(t.Context(), linkHdr, nil)
		other := linkHdr
		other.Sig.Count++
		b.l.Begin(t.Context(), other, nil)
		dst := pattern(8, 9)
		require.NoError(t, b.l.Post(dst))
		_, err := a.l.Send(pattern(8, 1))
		require.NoError(t, err)
		require.ErrorIs(t, b.l.Wait(), ErrMismatch)
		require.Equal(t, pattern(8, 9), dst, "the mismatched payload landed")
	})
	t.Run("peer closed", func(t *testing.T) {
		a, b := pair(t)
		beginBoth(a, b, linkHdr)
		require.NoError(t, b.l.Post(make([]byte, 4)))
		require.NoError(t, a.s.Close())
		require.ErrorIs(t, b.l.Wait(), ErrPeerLost)
	})
}
