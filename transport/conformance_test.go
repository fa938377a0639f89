package transport_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/quic"
)

// The conformance suite: every transport (mem, tcp, tcp+tls, quic, shm) must frame,
// close and authenticate the same way, so that links and collectives run on
// any of them unchanged; and so must the streams the Connectors make of them
// (a Mesh over each Network, the pipe hub), which are what collectives run on,
// and the streams an AuthListener and DialAuth make over each Network.

const confTimeout = 5 * time.Second

type pairMaker func(t *testing.T) (client, server transport.Stream)

var transports = []struct {
	name string
	pair pairMaker
}{
	{"mem", memPair},
	{"tcp", func(t *testing.T) (transport.Stream, transport.Stream) { return tcpPair(t, false) }},
	{"tcp+tls", func(t *testing.T) (transport.Stream, transport.Stream) { return tcpPair(t, true) }},
	{"quic", quicPair},
	{"mesh/tcp", meshPair(networks[0].make)},
	{"mesh/tcp+tls", meshPair(networks[1].make)},
	{"mesh/quic", meshPair(networks[2].make)},
	{"mesh/shm-control", meshPair(shmControl.make)},
	{"auth/tcp", authPair(networks[0].make)},
	{"auth/tcp+tls", authPair(networks[1].make)},
	{"auth/quic", authPair(networks[2].make)},
	{"pipehub", hubPair},
	{"shm", shmPair(func(t *testing.T) []transport.Connector {
		return asConnectors(meshes(t, 2, shmControl.make, nil, nil))
	})},
	{"shm/pipehub", shmPair(func(*testing.T) []transport.Connector {
		hub := transport.NewPipeHub(2)
		return []transport.Connector{hub.Connector(0), hub.Connector(1)}
	})},
}

func cleanup(t *testing.T, ss ...transport.Stream) {
	t.Cleanup(func() {
		for _, s := range ss {
			_ = s.Close()
		}
		for _, s := range ss {
			if q, ok := s.(*quic.Stream); ok {
				<-q.Done() // every goroutine of the link has ended
			}
		}
	})
}

func memPair(t *testing.T) (transport.Stream, transport.Stream) {
	a, b := transport.Pipe()
	cleanup(t, a, b)
	return a, b
}

func newCert(t *testing.T) *transport.Certificate {
	c, err := transport.NewCertificate()
	require.NoError(t, err)
	return c
}

func tcpPair(t *testing.T, withTLS bool) (transport.Stream, transport.Stream) {
	ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
	defer cancel()
	ln, err := transport.ListenTCP(ctx, "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	cc, sc := newCert(t), newCert(t)
	type result struct {
		s   transport.Stream
		err error
	}
	ch := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil || !withTLS {
			ch <- result{conn, err}
			return
		}
		s, err := transport.ServerTLS(ctx, conn, sc, transport.ExpectFingerprint(cc.Fingerprint()))
		ch <- result{s, err}
	}()
	conn, err := transport.DialTCP(ctx, ln.Addr().String())
	require.NoError(t, err)
	var client transport.Stream = conn
	if withTLS {
		client, err = transport.ClientTLS(ctx, conn, cc, sc.Fingerprint())
		require.NoError(t, err)
	}
	r := <-ch
	require.NoError(t, r.err)
	cleanup(t, client, r.s)
	return client, r.s
}

func quicPair(t *testing.T) (transport.Stream, transport.Stream) {
	ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
	defer cancel()
	cc, sc := newCert(t), newCert(t)
	ln, err := quic.Listen(ctx, "127.0.0.1:0", sc, transport.ExpectFingerprint(cc.Fingerprint()))
	require.NoError(t, err)
	defer ln.Close()
	client, err := quic.Dial(ctx, ln.Addr().String(), cc, sc.Fingerprint())
	require.NoError(t, err)
	server, err := ln.Accept(ctx)
	require.NoError(t, err)
	cleanup(t, client, server)
	return client, server
}

func payload(n int, seed uint32) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(seed*31) + byte(i*7) + byte(i>>9)
	}
	return b
}

func TestConformance(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			t.Run("frames", func(t *testing.T) { testFrames(t, tr.pair) })
			t.Run("concurrent frames", func(t *testing.T) { testConcurrentFrames(t, tr.pair) })
			t.Run("close", func(t *testing.T) { testClose(t, tr.pair) })
			t.Run("token", func(t *testing.T) { testToken(t, tr.pair) })
			for _, size := range []int{1 << 10, 4 << 20} {
				t.Run(fmt.Sprintf("abort notice behind a frame of %d bytes", size), func(t *testing.T) {
					testAbortNoticeBehindAFrame(t, tr.pair, size)
				})
			}
		})
	}
}

// testAbortNoticeBehindAFrame: a rank sends a data frame its peer has not
// asked for (the peer's reader has its header and waits for a receive to
// be posted), aborts with a reason and closes the connection at once; the
// peer then writes until a write fails. The peer's communicator fails with
// the reason, not with the failed write: its reader reads past the frame
// to the notice before it reports the connection lost. A small frame and
// the notice fit every transport's buffers; a large one does not fit a
// pipe's (it has none) or the shared-memory ring, and the notice goes
// beside the stream there. (A large frame over a network stream that did
// not fit the kernel's buffers would lose the notice: it is not tested.)
func testAbortNoticeBehindAFrame(t *testing.T, pair pairMaker, size int) {
	a, b := pair(t)
	_, beside := a.(transport.NoticeStream)
	if size > 1<<20 && !beside {
		t.Skip("a network stream: the frame is left to the kernel's buffers")
	}
	wrote := make(chan struct{})
	b = watchFirstWrite(b, wrote)
	survivorFail, aborterFail := transport.NewFailure(nil), transport.NewFailure(nil)
	survivor := transport.NewLink(1, transport.NewConn(a), survivorFail, nil) // its peer is rank 1
	aborter := transport.NewLink(0, transport.NewConn(b), aborterFail, nil)
	t.Cleanup(func() {
		survivor.Shutdown(false, 0)
		aborter.Shutdown(false, 0)
	})
	hdr := transport.Header{Comm: 3, Seq: 1, Sig: transport.Signature{Kind: 1, DType: 1, Count: uint64(size)}}
	survivor.Begin(context.Background(), hdr, time.After(confTimeout)) // a Flush stuck on a peer gone does not hang the test
	aborter.Begin(context.Background(), hdr, nil)

	_, err := aborter.Send(payload(size, 1))
	require.NoError(t, err)
	select {
	case <-wrote: // the frame's header, at least, is in the stream
	case <-time.After(confTimeout):
		t.Fatal("the frame was not written")
	}
	reason := "rank 1 called Abort: the checkpoint failed"
	aborter.Notify(&transport.Header{Type: transport.Abort, Comm: 3}, append([]byte{4}, reason...), 50*time.Millisecond)
	aborter.Shutdown(false, 0)

	deadline := time.Now().Add(confTimeout)
	for survivorFail.Err() == nil && time.Now().Before(deadline) {
		tk, err := survivor.Send(payload(100, 2))
		if err == nil {
			err = survivor.Flush(tk)
		}
		if err != nil {
			break
		}
	}
	select {
	case <-survivorFail.Done():
	case <-time.After(confTimeout):
		t.Fatal("the survivor's communicator did not fail")
	}
	var ra *transport.RemoteAbortError
	require.ErrorAs(t, survivorFail.Err(), &ra)
	assert.Equal(t, 1, ra.Peer)
	assert.Equal(t, byte(4), ra.Code)
	assert.Equal(t, reason, ra.Reason)
}

// testFrames sends frames of 0 B, 1 B and 1 MiB both ways.
func testFrames(t *testing.T, pair pairMaker) {
	a, b := pair(t)
	ca, cb := transport.NewConn(a), transport.NewConn(b)
	sizes := []int{0, 1, 1 << 20}
	for dir, ends := range [][2]*transport.Conn{{ca, cb}, {cb, ca}} {
		errc := make(chan error, 1)
		go func() {
			for i, n := range sizes {
				h := transport.Header{Type: transport.Data, Comm: 7, Seq: uint64(dir), Index: uint32(i)}
				if err := ends[0].WriteFrame(&h, payload(n, uint32(i))); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		for i, n := range sizes {
			var h transport.Header
			require.NoError(t, ends[1].ReadHeader(&h))
			require.Equal(t, transport.Header{Type: transport.Data, Comm: 7, Seq: uint64(dir), Index: uint32(i), Len: uint32(n)}, h)
			got := make([]byte, h.Len)
			require.NoError(t, ends[1].ReadPayload(got))
			require.True(t, bytes.Equal(payload(n, uint32(i)), got), "frame %d of %d bytes differs", i, n)
		}
		require.NoError(t, <-errc)
	}
}

// testConcurrentFrames writes frames from several goroutines at once on one
// stream: each arrives whole.
func testConcurrentFrames(t *testing.T, pair pairMaker) {
	a, b := pair(t)
	ca, cb := transport.NewConn(a), transport.NewConn(b)
	const writers, each = 4, 16
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				idx := uint32(w*each + i)
				h := transport.Header{Type: transport.Data, Comm: uint32(w), Index: idx}
				if err := ca.WriteFrame(&h, payload(int(idx)*997%70000, idx)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	seen := make(map[uint32]bool)
	for range writers * each {
		var h transport.Header
		require.NoError(t, cb.ReadHeader(&h))
		got := make([]byte, h.Len)
		require.NoError(t, cb.ReadPayload(got))
		require.Equal(t, h.Index/each, h.Comm, "frame %d", h.Index)
		require.True(t, bytes.Equal(payload(int(h.Index)*997%70000, h.Index), got), "frame %d interleaved", h.Index)
		require.False(t, seen[h.Index])
		seen[h.Index] = true
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// testClose: the peer reads what was written before Close, then EOF; a
// local Close unblocks a reader.
func testClose(t *testing.T, pair pairMaker) {
	a, b := pair(t)
	ca, cb := transport.NewConn(a), transport.NewConn(b)
	done := make(chan error, 1)
	go func() {
		h := transport.Header{Type: transport.Bye}
		err := ca.WriteFrame(&h, nil)
		_ = ca.Close()
		done <- err
	}()
	var h transport.Header
	require.NoError(t, cb.ReadHeader(&h))
	assert.Equal(t, transport.Bye, h.Type)
	err := cb.ReadHeader(&h)
	require.Error(t, err)
	assert.True(t, errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF), "after the peer closed: %v", err)
	require.NoError(t, <-done)

	// A blocked reader wakes when its own end closes.
	c, d := pair(t)
	read := make(chan error, 1)
	go func() {
		var buf [1]byte
		_, err := c.Read(buf[:])
		read <- err
	}()
	require.NoError(t, c.Close())
	select {
	case err := <-read:
		require.Error(t, err)
	case <-time.After(confTimeout):
		t.Fatal("Close did not unblock the reader")
	}
	_ = d
}

// testToken runs the job-token handshake on the transport: the right token
// passes, a wrong one is refused on both sides with ErrAuth.
func testToken(t *testing.T, pair pairMaker) {
	for _, tc := range []struct {
		name        string
		clientToken string
		ok          bool
	}{{"right token", "s3cret", true}, {"wrong token", "guess", false}} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pair(t)
			id := transport.Identity{Token: []byte("s3cret"), Job: "conf", Rank: 0, Size: 2, Purpose: transport.PurposePeer}
			srv := make(chan error, 1)
			go func() {
				_, err := transport.ServerHandshake(b, id, time.Now().Add(confTimeout), nil)
				srv <- err
			}()
			cid := id
			cid.Rank, cid.Token = 1, []byte(tc.clientToken)
			h, err := transport.ClientHandshake(a, cid, time.Now().Add(confTimeout))
			if err != nil {
				_ = a.Close() // an unbuffered pipe holds the server's refusal until read
			}
			serr := <-srv
			if tc.ok {
				require.NoError(t, err)
				require.NoError(t, serr)
				assert.Equal(t, 0, h.Rank)
				return
			}
			assert.ErrorIs(t, err, transport.ErrAuth)
			assert.ErrorIs(t, serr, transport.ErrAuth)
		})
	}
}

// A certificate whose fingerprint is not the expected one is refused, by
// the dialer (wrong server) and by the listener (wrong client).
func TestWrongFingerprintIsRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
	defer cancel()
	cc, sc, other := newCert(t), newCert(t), newCert(t)

	t.Run("tcp+tls dialer", func(t *testing.T) {
		ln, err := transport.ListenTCP(ctx, "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		srv := make(chan error, 1)
		go func() {
			conn, err := ln.Accept()
			if err == nil {
				var s net.Conn
				s, err = transport.ServerTLS(ctx, conn, sc, nil)
				if err == nil {
					_ = s.Close()
				}
			}
			srv <- err
		}()
		conn, err := transport.DialTCP(ctx, ln.Addr().String())
		require.NoError(t, err)
		_, err = transport.ClientTLS(ctx, conn, cc, other.Fingerprint())
		require.ErrorIs(t, err, transport.ErrAuth)
		require.Error(t, <-srv)
	})
	t.Run("tcp+tls listener", func(t *testing.T) {
		ln, err := transport.ListenTCP(ctx, "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		srv := make(chan error, 1)
		go func() {
			conn, err := ln.Accept()
			if err == nil {
				_, err = transport.ServerTLS(ctx, conn, sc, transport.ExpectFingerprint(other.Fingerprint()))
			}
			srv <- err
		}()
		conn, err := transport.DialTCP(ctx, ln.Addr().String())
		require.NoError(t, err)
		s, cerr := transport.ClientTLS(ctx, conn, cc, sc.Fingerprint())
		if cerr == nil {
			// TLS 1.3: the client may finish before the server refuses; its
			// first read then fails.
			_, cerr = s.Read(make([]byte, 1))
			_ = s.Close()
		}
		require.Error(t, cerr)
		require.ErrorIs(t, <-srv, transport.ErrAuth)
	})
	t.Run("quic dialer", func(t *testing.T) {
		ln, err := quic.Listen(ctx, "127.0.0.1:0", sc, nil)
		require.NoError(t, err)
		defer ln.Close()
		_, err = quic.Dial(ctx, ln.Addr().String(), cc, other.Fingerprint())
		require.Error(t, err)
		assert.Contains(t, err.Error(), "not the one")
	})
	t.Run("quic listener", func(t *testing.T) {
		ln, err := quic.Listen(ctx, "127.0.0.1:0", sc, transport.ExpectFingerprint(other.Fingerprint()))
		require.NoError(t, err)
		defer ln.Close()
		s, cerr := quic.Dial(ctx, ln.Addr().String(), cc, sc.Fingerprint())
		_, err = ln.Accept(ctx)
		require.ErrorIs(t, err, transport.ErrAuth)
		if cerr == nil {
			_, cerr = s.Read(make([]byte, 1))
			_ = s.Close()
			<-s.(*quic.Stream).Done()
		}
		require.Error(t, cerr)
	})
}

func TestPeerFingerprint(t *testing.T) {
	a, b := tcpPair(t, true)
	fa, ok := transport.PeerFingerprint(a)
	require.True(t, ok)
	fb, ok := transport.PeerFingerprint(b)
	require.True(t, ok)
	assert.NotEqual(t, fa, fb)
	q, _ := quicPair(t)
	_, ok = transport.PeerFingerprint(q)
	assert.True(t, ok)
	m, _ := memPair(t)
	_, ok = transport.PeerFingerprint(m)
	assert.False(t, ok)
}

// watchFirstWrite returns s, closing wrote once its first Write has
// returned. It keeps s's notices beside the stream, if it has them.
func watchFirstWrite(s transport.Stream, wrote chan struct{}) transport.Stream {
	w := &firstWrite{Stream: s, wrote: wrote}
	if ns, ok := s.(transport.NoticeStream); ok {
		return firstWriteNotices{w, ns}
	}
	return w
}

type firstWrite struct {
	transport.Stream
	wrote chan struct{}
	once  sync.Once
}

func (w *firstWrite) Write(p []byte) (int, error) {
	n, err := w.Stream.Write(p)
	w.once.Do(func() { close(w.wrote) })
	return n, err
}

type firstWriteNotices struct {
	*firstWrite
	ns transport.NoticeStream
}

func (w firstWriteNotices) Notify(p []byte) error  { return w.ns.Notify(p) }
func (w firstWriteNotices) Notices() <-chan []byte { return w.ns.Notices() }
