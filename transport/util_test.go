package transport

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait in the tests so that a regression shows up as
// a failure, not as a hung test binary. Nothing waits for it to pass.
const testTimeout = 5 * time.Second

func testDeadline() time.Time { return time.Now().Add(testTimeout) }

// noLeaks checks, when the test ends (after its other cleanups), that every
// goroutine started during the test has ended.
func noLeaks(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// pipePair returns both ends of an in-process stream.
func pipePair(t testing.TB) (Stream, Stream) {
	t.Helper()
	a, b := Pipe()
	t.Cleanup(func() {
		_ = a.Close()
		_ = b.Close()
	})
	return a, b
}

// tcpConnPair returns both ends of a loopback TCP connection made with
// ListenTCP and DialTCP.
func tcpConnPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ctx := context.Background()
	ln, err := ListenTCP(ctx, "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	client, err = DialTCP(ctx, ln.Addr().String())
	require.NoError(t, err)
	a := <-ch
	require.NoError(t, a.err)
	t.Cleanup(func() {
		_ = client.Close()
		_ = a.c.Close()
	})
	return client, a.c
}

func tcpPair(t testing.TB) (Stream, Stream) {
	c, s := tcpConnPair(t)
	return c, s
}

// streamKinds are the byte streams every end-to-end test runs over.
var streamKinds = []struct {
	name string
	pair func(testing.TB) (Stream, Stream)
}{
	{"pipe", pipePair},
	{"tcp", tcpPair},
}

// pattern returns n bytes that depend on seed and on their position.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>8)
	}
	return b
}

func filled(n int, v byte) []byte {
	return bytes.Repeat([]byte{v}, n)
}

// allEqual reports whether every byte of b is v.
func allEqual(b []byte, v byte) bool {
	for _, x := range b {
		if x != v {
			return false
		}
	}
	return true
}

// recorder keeps every byte written through the streams that share it.
type recorder struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (r *recorder) add(p []byte) {
	r.mu.Lock()
	r.buf.Write(p)
	r.mu.Unlock()
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

// recordingStream records what is written to the wrapped stream.
type recordingStream struct {
	Stream
	rec *recorder
}

func (s recordingStream) Write(p []byte) (int, error) {
	s.rec.add(p)
	return s.Stream.Write(p)
}

// waitDone waits for ch to be closed, failing the test after testTimeout.
func waitDone(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// recvErr receives from ch, failing the test after testTimeout.
func recvErr(t testing.TB, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
		return nil
	}
}
