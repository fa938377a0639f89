package shm_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/shm"
)

func TestMain(m *testing.M) {
	testjob.RunRank(childRoles)
	goleak.VerifyTestMain(m)
}

const testTimeout = 10 * time.Second

// meshes returns the control meshes of n ranks over ControlNetwork, started.
func meshes(t testing.TB, n int, token string) []*transport.Mesh {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ms := make([]*transport.Mesh, n)
	eps := make([]transport.Endpoint, n)
	for r := range ms {
		m, err := transport.ListenMesh(ctx, shm.ControlNetwork(), "", transport.Identity{Token: []byte(token), Job: "shm-test", Rank: r, Size: n}, nil)
		require.NoError(t, err)
		ms[r], eps[r] = m, m.Endpoint()
	}
	for _, m := range ms {
		require.NoError(t, m.Start(eps))
		t.Cleanup(func() { _ = m.Close() })
	}
	return ms
}

// pair connects two ranks through shared memory (channel 1) and returns
// rank 0's end and rank 1's.
func pair(t testing.TB, opt shm.Options) (transport.Stream, transport.Stream) {
	t.Helper()
	ms := meshes(t, 2, "t")
	cs := []transport.Connector{shm.Over(0, ms[0], opt), shm.Over(1, ms[1], opt)}
	t.Cleanup(func() {
		for _, c := range cs {
			_ = c.Close()
		}
	})
	return connectPair(t, cs[0], cs[1])
}

func connectPair(t testing.TB, a, b transport.Connector) (transport.Stream, transport.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var sb transport.Stream
	var errB error
	done := make(chan struct{})
	go func() {
		defer close(done)
		sb, errB = b.Connect(ctx, 1, 0)
	}()
	sa, errA := a.Connect(ctx, 1, 1)
	<-done
	require.NoError(t, errA)
	require.NoError(t, errB)
	t.Cleanup(func() {
		_ = sa.Close()
		_ = sb.Close()
	})
	return sa, sb
}

// segments lists the segments in /dev/shm that the processes pids
// created (this one if none is given): other tests, in other processes,
// may be making theirs meanwhile.
func segments(t testing.TB, pids ...int) []string {
	t.Helper()
	if len(pids) == 0 {
		pids = []int{os.Getpid()}
	}
	entries, err := os.ReadDir("/dev/shm")
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		for _, pid := range pids {
			if strings.HasPrefix(e.Name(), fmt.Sprintf("ringo-%d-", pid)) {
				names = append(names, e.Name())
			}
		}
	}
	return names
}

// A stream moves bytes both ways, in order, through rings far smaller than
// the messages, with reads and writes of every size.
func TestStreamMovesBytesBothWays(t *testing.T) {
	a, b := pair(t, shm.Options{SegmentBytes: shm.MinSegmentBytes})
	const total = 3<<20 + 17
	src := make([]byte, total)
	for i := range src {
		src[i] = byte(i*7 + i>>11)
	}
	for _, dir := range [][2]transport.Stream{{a, b}, {b, a}} {
		errc := make(chan error, 1)
		go func() {
			for off, n := 0, 1; off < total; off, n = off+n, n*3%65521+1 {
				if _, err := dir[0].Write(src[off:min(total, off+n)]); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		got := make([]byte, total)
		for off, n := 0, 5; off < total; {
			k, err := dir[1].Read(got[off:min(total, off+n)])
			require.NoError(t, err)
			off += k
			n = n*5%100003 + 1
		}
		require.NoError(t, <-errc)
		require.True(t, bytes.Equal(src, got))
	}
}

// No segment name is left in /dev/shm once a pair is connected, nor after
// it is closed.
func TestNoSegmentIsLeftBehind(t *testing.T) {
	before := segments(t)
	a, b := pair(t, shm.Options{})
	assert.Equal(t, before, segments(t), "names left while connected")
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())
	assert.Equal(t, before, segments(t), "names left after close")
}

// After the peer closes, a reader gets what was written, then io.EOF, and
// a writer an error; a local Close wakes a blocked reader and writer.
func TestCloseAndPeerGone(t *testing.T) {
	a, b := pair(t, shm.Options{SegmentBytes: shm.MinSegmentBytes})
	_, err := a.Write([]byte("last words"))
	require.NoError(t, err)
	require.NoError(t, a.Close())
	got, err := io.ReadAll(b)
	require.NoError(t, err)
	assert.Equal(t, "last words", string(got))
	require.Eventually(t, func() bool {
		_, err := b.Write(make([]byte, 1))
		return err != nil
	}, testTimeout, time.Millisecond, "a write to a closed peer fails")

	c, d := pair(t, shm.Options{SegmentBytes: shm.MinSegmentBytes})
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		read <- err
	}()
	write := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, 1<<20)) // more than the ring holds: blocks
		write <- err
	}()
	require.NoError(t, c.Close())
	assert.ErrorIs(t, <-read, net.ErrClosed)
	assert.ErrorIs(t, <-write, net.ErrClosed)
	_, err = c.Read(make([]byte, 1))
	assert.ErrorIs(t, err, net.ErrClosed)
	_ = d
}

// Deadlines bound reads and writes, including one already waiting.
func TestDeadlines(t *testing.T) {
	a, _ := pair(t, shm.Options{SegmentBytes: shm.MinSegmentBytes})
	require.NoError(t, a.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	start := time.Now()
	_, err := a.Read(make([]byte, 1))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	assert.Less(t, time.Since(start), 5*time.Second)

	require.NoError(t, a.SetReadDeadline(time.Time{}))
	read := make(chan error, 1)
	go func() {
		_, err := a.Read(make([]byte, 1))
		read <- err
	}()
	require.NoError(t, a.SetReadDeadline(time.Now())) // wakes the waiting read
	select {
	case err := <-read:
		require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	case <-time.After(5 * time.Second):
		t.Fatal("a new deadline did not wake the read")
	}

	require.NoError(t, a.SetWriteDeadline(time.Now().Add(20*time.Millisecond)))
	n, err := a.Write(make([]byte, 1<<20))
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	assert.Equal(t, shm.MinSegmentBytes, n, "the ring's worth was written")
}

// The setup refuses what it is not given by a peer of its job: a control
// stream without the token never gets as far as a segment name.
func TestStrangerWithoutTheTokenCannotAttach(t *testing.T) {
	ms := meshes(t, 2, "right")
	c := shm.Over(0, ms[0], shm.Options{})
	defer c.Close()
	connected := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		s, err := c.Connect(ctx, 1, 1)
		if s != nil {
			_ = s.Close()
		}
		connected <- err
	}()
	before := segments(t)
	// The stranger dials rank 0's control listener as rank 1 with a guess
	// at the token.
	conn, err := shm.ControlNetwork().Dial(ctx, ms[0].Endpoint())
	require.NoError(t, err)
	defer conn.Close()
	_, err = transport.ClientHandshake(conn, transport.Identity{Token: []byte("guess"), Job: "shm-test", Rank: 1, Size: 2, Purpose: transport.PurposePeer, Channel: 1}, time.Now().Add(testTimeout))
	require.ErrorIs(t, err, transport.ErrAuth)
	// Rank 0 is still waiting for a real rank 1, and never offered a name.
	_, err = io.Copy(io.Discard, conn) // until the refused stranger is disconnected
	require.NoError(t, err)
	assert.Equal(t, before, segments(t))
	select {
	case err := <-connected:
		t.Fatalf("rank 0 connected to a stranger: %v", err)
	default:
	}
	cancel()
	require.ErrorIs(t, <-connected, context.Canceled)
}

// Segments are made 0600 under 128 random bits, and a name that is not one
// of ours is refused.
func TestSegmentNamesAndModes(t *testing.T) {
	seen := map[string]bool{}
	for range 3 {
		name, mode := shm.CreateSegmentForTest(t)
		require.Regexp(t, fmt.Sprintf(`^ringo-%d-[0-9a-f]{32}$`, os.Getpid()), name)
		require.False(t, seen[name])
		seen[name] = true
		require.Equal(t, os.FileMode(0o600), mode)
	}
	for _, bad := range []string{"../etc/passwd", "ringo-", "ringo-1-../../x", "ringo-0123456789abcdef0123456789abcdef", "other-1-0123456789abcdef0123456789abcdef"} {
		err := shm.OpenSegmentForTest(bad)
		require.ErrorIs(t, err, transport.ErrProtocol, bad)
	}
}

// Frames go over shared memory like over any stream; see also the
// transport conformance suite, which runs over it.
func TestConnFramesOverShm(t *testing.T) {
	a, b := pair(t, shm.Options{SegmentBytes: 64 << 10})
	ca, cb := transport.NewConn(a), transport.NewConn(b)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 100 {
			h := transport.Header{Type: transport.Data, Comm: 3, Seq: uint64(i), Index: uint32(i)}
			if err := ca.WriteFrame(&h, bytes.Repeat([]byte{byte(i)}, i*1013)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range 100 {
		var h transport.Header
		require.NoError(t, cb.ReadHeader(&h))
		require.Equal(t, uint64(i), h.Seq)
		p := make([]byte, h.Len)
		require.NoError(t, cb.ReadPayload(p))
		require.True(t, bytes.Equal(bytes.Repeat([]byte{byte(i)}, i*1013), p))
	}
	wg.Wait()
}

// With no spin every wait sleeps, so every frame after one rings the
// peer's bell: a ping-pong and a transfer through a small ring still go
// through, in order.
func TestSleepersAreRungAwake(t *testing.T) {
	a, b := pair(t, shm.Options{SegmentBytes: shm.MinSegmentBytes, Spin: -1})
	go func() { _, _ = io.Copy(b, b) }() // echo
	msg := make([]byte, 3*shm.MinSegmentBytes+5)
	got := make([]byte, len(msg))
	for round := range 200 {
		n := 1 + round*97%len(msg)
		for i := range msg[:n] {
			msg[i] = byte(round + i)
		}
		errc := make(chan error, 1)
		go func() { _, err := a.Write(msg[:n]); errc <- err }()
		_, err := io.ReadFull(a, got[:n])
		require.NoError(t, err)
		require.NoError(t, <-errc)
		require.Equal(t, msg[:n], got[:n], "round %d", round)
	}
}
