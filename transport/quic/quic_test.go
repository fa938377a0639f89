package quic_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/quic"
)

// TestMain fails the package if a link leaves a goroutine behind (quic-go's
// included) once it and its listener are closed.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// listener makes a server and a client certificate and a listener that
// accepts only the client's.
func listener(t testing.TB) (ln *quic.Listener, server, client *transport.Certificate) {
	t.Helper()
	sc, err := transport.NewCertificate()
	require.NoError(t, err)
	cc, err := transport.NewCertificate()
	require.NoError(t, err)
	ln, err = quic.Listen(context.Background(), "127.0.0.1:0", sc, transport.ExpectFingerprint(cc.Fingerprint()))
	require.NoError(t, err)
	return ln, sc, cc
}

// link dials one link to a new listener: the dialed and the accepted end.
func link(t testing.TB) (*quic.Listener, *quic.Stream, *quic.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ln, sc, cc := listener(t)
	c, err := quic.Dial(ctx, ln.Addr().String(), cc, sc.Fingerprint())
	require.NoError(t, err)
	s, err := ln.Accept(ctx)
	require.NoError(t, err)
	return ln, c.(*quic.Stream), s.(*quic.Stream)
}

// A link stays up when its listener closes; the listener's socket closes
// with the last link.
func TestLinkOutlivesItsListener(t *testing.T) {
	ln, c, s := link(t)
	require.NoError(t, ln.Close())
	_, err := c.Write([]byte("ping"))
	require.NoError(t, err)
	buf := make([]byte, 4)
	_, err = io.ReadFull(s, buf)
	require.NoError(t, err)
	require.Equal(t, "ping", string(buf))
	require.NoError(t, c.Close())
	require.NoError(t, s.Close())
	<-c.Done()
	<-s.Done()
}

// Close does not wait for a peer that keeps its end open longer than the
// linger bound, and the peer still reads everything, then EOF.
func TestCloseDoesNotWaitForThePeer(t *testing.T) {
	ln, c, s := link(t)
	defer ln.Close()
	_, err := c.Write([]byte("last words"))
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, c.Close())
	require.Less(t, time.Since(start), 3*time.Second)
	got, err := io.ReadAll(s)
	require.NoError(t, err)
	require.Equal(t, "last words", string(got))
	require.NoError(t, s.Close())
	<-c.Done()
	<-s.Done()
}

// A Dialer opens every link to one listener as a stream of one connection;
// each link is independent (its own data, its own close), and the
// connection closes after the last link and the Dialer let it go.
func TestDialerSharesOneConnectionPerPeer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, sc, cc := listener(t)
	defer ln.Close()
	d := quic.NewDialer(cc)
	const links = 5
	var dialed, acceptd []*quic.Stream
	for range links {
		c, err := d.Dial(ctx, ln.Addr().String(), sc.Fingerprint())
		require.NoError(t, err)
		s, err := ln.Accept(ctx)
		require.NoError(t, err)
		dialed, acceptd = append(dialed, c.(*quic.Stream)), append(acceptd, s.(*quic.Stream))
	}
	for i := 1; i < links; i++ {
		require.Equal(t, dialed[0].LocalAddr(), dialed[i].LocalAddr(), "link %d has a connection of its own", i)
	}
	// Each link carries its own bytes, in both directions, all at once.
	for i := range links {
		msg := []byte{byte(i), 'x', byte(i)}
		_, err := dialed[i].Write(msg)
		require.NoError(t, err)
		_, err = acceptd[i].Write(msg)
		require.NoError(t, err)
	}
	for i := range links {
		for _, s := range []*quic.Stream{acceptd[i], dialed[i]} {
			got := make([]byte, 3)
			_, err := io.ReadFull(s, got)
			require.NoError(t, err)
			require.Equal(t, []byte{byte(i), 'x', byte(i)}, got)
		}
	}
	// Closing one link ends only that link: its peer reads EOF, the others
	// go on.
	require.NoError(t, dialed[0].Close())
	_, err := acceptd[0].Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)
	require.NoError(t, acceptd[0].Close())
	_, err = dialed[1].Write([]byte("on"))
	require.NoError(t, err)
	got := make([]byte, 2)
	_, err = io.ReadFull(acceptd[1], got)
	require.NoError(t, err)
	require.Equal(t, "on", string(got))
	d.Close()
	for i := range links {
		require.NoError(t, dialed[i].Close())
		require.NoError(t, acceptd[i].Close())
	}
	for i := range links {
		<-dialed[i].Done()
		<-acceptd[i].Done()
	}
}
