package xfer

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/internal/linktest"
)

// lengths are the vector lengths, in bytes, around the piece size.
var lengths = []int{0, 1, 7, MaxPiece - 1, MaxPiece, MaxPiece + 1, 2*MaxPiece + 3}

// wantPieces is how a vector of n elements of size bytes must be cut: into
// pieces of MaxPiece bytes (rounded down to whole elements) and the rest,
// and an empty vector into one empty piece.
func wantPieces(n, size int) []int {
	step := MaxPiece / size
	if n == 0 {
		return []int{0}
	}
	var out []int
	for ; n > step; n -= step {
		out = append(out, step)
	}
	return append(out, n)
}

func TestPieces(t *testing.T) {
	for _, n := range lengths {
		var got []int
		next := 0
		require.NoError(t, pieces(make([]uint8, n), func(lo, hi int) error {
			require.Equal(t, next, lo, "n=%d: pieces must be contiguous", n)
			next = hi
			got = append(got, hi-lo)
			return nil
		}))
		require.Equal(t, n, next, "n=%d: pieces must cover the vector", n)
		require.Equal(t, wantPieces(n, 1), got, "n=%d", n)
	}
	// Wider elements: a piece is whole elements, at most MaxPiece bytes.
	var got []int
	require.NoError(t, pieces(make([]float64, MaxPiece/8+1), func(lo, hi int) error {
		got = append(got, hi-lo)
		return nil
	}))
	require.Equal(t, []int{MaxPiece / 8, 1}, got)
	// An error stops the cutting.
	calls := 0
	stop := errors.New("stop")
	require.ErrorIs(t, pieces(make([]uint8, 3*MaxPiece), func(lo, hi int) error { calls++; return stop }), stop)
	require.Equal(t, 1, calls)
}

// recorder is a link that records the frames sent on it and checks the
// lockstep promise: never more than one frame sent and not yet flushed.
type recorder struct {
	*linktest.Chan
	mu          sync.Mutex
	frames      []int // lengths of the frames sent
	sent, flush uint64
	maxAhead    uint64
}

func (l *recorder) Send(src []byte) (uint64, error) {
	l.mu.Lock()
	l.frames = append(l.frames, len(src))
	l.sent++
	l.maxAhead = max(l.maxAhead, l.sent-l.flush)
	t := l.sent
	l.mu.Unlock()
	_, err := l.Chan.Send(src)
	return t, err
}

func (l *recorder) Flush(t uint64) error {
	l.mu.Lock()
	l.flush = max(l.flush, t)
	l.mu.Unlock()
	return l.Chan.Flush(t)
}

func pattern(n, salt int) []uint8 {
	b := make([]uint8, n)
	for i := range b {
		b[i] = uint8(i*13 + i>>16 + salt)
	}
	return b
}

// Send and Recv move vectors of every length around the piece size, one
// frame per piece, and the receiver gets the bytes sent.
func TestSendAndRecv(t *testing.T) {
	for _, n := range lengths {
		_, ends := linktest.Mesh(2)
		out := &recorder{Chan: ends[0][1]}
		src := pattern(n, 1)
		got := make([]uint8, n)
		var wg sync.WaitGroup
		var sendErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			sendErr = Send(out, src)
		}()
		recvErr := Recv(ends[1][0], got)
		wg.Wait()
		require.NoError(t, sendErr, "n=%d", n)
		require.NoError(t, recvErr, "n=%d", n)
		require.True(t, string(src) == string(got), "n=%d: received other bytes", n)
		require.Equal(t, wantPieces(n, 1), out.frames, "n=%d", n)
		require.Equal(t, uint64(1), out.maxAhead, "n=%d: Send waits for each piece", n)
		require.Zero(t, ends[1][0].Unread(), "n=%d", n)
	}
}

// A receiver expecting another length fails (the frame does not fit its
// receive) instead of taking part of the next message.
func TestRecvOfAnotherLengthFails(t *testing.T) {
	_, ends := linktest.Mesh(2)
	require.NoError(t, Send(ends[0][1], pattern(10, 0)))
	require.Error(t, Recv(ends[1][0], make([]uint8, 11)))
}

// SendRecv on three ranks in a ring (send to the next, receive from the
// previous) with a different length on each rank: a rank sends more pieces
// than it receives, or fewer, or none (an empty vector is one empty frame).
// Pieces go in lockstep, and every rank receives what its predecessor sent.
func TestSendRecvOfDifferentLengths(t *testing.T) {
	combos := [][3]int{
		{0, 1, 7},
		{MaxPiece + 1, 0, 5},
		{2*MaxPiece + 3, MaxPiece, 0},
		{MaxPiece - 1, 2*MaxPiece + 3, MaxPiece + 1},
	}
	for _, lens := range combos {
		name := fmt.Sprint(lens)
		links, ends := linktest.Mesh(3)
		outs := make([]*recorder, 3)
		for r := range 3 {
			outs[r] = &recorder{Chan: ends[r][(r+1)%3]}
			links[r][(r+1)%3] = outs[r]
		}
		got := make([][]uint8, 3)
		errs := make([]error, 3)
		var wg sync.WaitGroup
		for r := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				prev := (r + 2) % 3
				got[r] = make([]uint8, lens[prev])
				errs[r] = SendRecv(links[r][(r+1)%3], pattern(lens[r], r), links[r][prev], got[r])
			}()
		}
		wg.Wait()
		for r := range 3 {
			prev := (r + 2) % 3
			require.NoError(t, errs[r], "%s rank %d", name, r)
			require.True(t, string(pattern(lens[prev], prev)) == string(got[r]), "%s rank %d: received other bytes", name, r)
			require.Equal(t, wantPieces(lens[r], 1), outs[r].frames, "%s rank %d", name, r)
			require.Equal(t, uint64(1), outs[r].maxAhead, "%s rank %d: more than one piece queued", name, r)
			require.Zero(t, ends[r][prev].Unread(), "%s rank %d", name, r)
		}
	}
}

// Exchange swaps two ranks' vectors over one link, of any element type.
func TestExchange(t *testing.T) {
	for _, n := range []int{0, 3, MaxPiece/8 + 2} {
		links, ends := linktest.Mesh(2)
		vecs := [2][]float64{make([]float64, n), make([]float64, n)}
		for r := range vecs {
			for i := range vecs[r] {
				vecs[r][i] = float64(r*1_000_000 + i)
			}
		}
		got := [2][]float64{make([]float64, n), make([]float64, n)}
		var wg sync.WaitGroup
		var errs [2]error
		for r := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[r] = Exchange(links[r][1-r], vecs[r], got[r])
			}()
		}
		wg.Wait()
		for r := range 2 {
			require.NoError(t, errs[r])
			require.Equal(t, kernel.Bytes(vecs[1-r]), kernel.Bytes(got[r]), "n=%d rank %d", n, r)
			require.Zero(t, ends[r][1-r].Unread())
		}
	}
}

// brokenLink fails the method named by at with err and counts the calls.
type brokenLink struct {
	*linktest.Chan
	at    string
	err   error
	calls int
}

func (l *brokenLink) fail(method string) error {
	l.calls++
	if method == l.at {
		return l.err
	}
	return nil
}

func (l *brokenLink) Post(dst []byte) error {
	if err := l.fail("Post"); err != nil {
		return err
	}
	return l.Chan.Post(dst)
}

func (l *brokenLink) Wait() error {
	if err := l.fail("Wait"); err != nil {
		return err
	}
	return l.Chan.Wait()
}

func (l *brokenLink) Send(src []byte) (uint64, error) {
	if err := l.fail("Send"); err != nil {
		return 0, err
	}
	return l.Chan.Send(src)
}

func (l *brokenLink) Flush(t uint64) error {
	if err := l.fail("Flush"); err != nil {
		return err
	}
	return l.Chan.Flush(t)
}

// A link's error ends the transfer at once with that error: no more
// pieces are sent or received after it.
func TestLinkErrorsEndTheTransfer(t *testing.T) {
	broken := errors.New("peer lost")
	big := 3 * MaxPiece
	for _, at := range []string{"Post", "Wait", "Send", "Flush"} {
		_, ends := linktest.Mesh(2)
		// The peer's frames are queued already, so a receive never waits.
		for range 3 {
			_, _ = ends[1][0].Send(make([]byte, MaxPiece))
		}
		l := &brokenLink{Chan: ends[0][1], at: at, err: broken}
		var err error
		switch at {
		case "Post", "Wait":
			err = Recv(l, make([]uint8, big))
		default:
			err = Send(l, make([]uint8, big))
		}
		require.ErrorIs(t, err, broken, at)
		require.Equal(t, map[string]int{"Post": 1, "Wait": 2, "Send": 1, "Flush": 2}[at], l.calls, "%s: calls made before stopping", at)

		l = &brokenLink{Chan: ends[0][1], at: at, err: broken}
		require.ErrorIs(t, SendRecv(l, make([]uint8, big), l, make([]uint8, MaxPiece)), broken, "SendRecv, %s", at)
	}
}
