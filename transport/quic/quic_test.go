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

func link(t *testing.T) (*quic.Listener, *quic.Stream, *quic.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sc, err := transport.NewCertificate()
	require.NoError(t, err)
	cc, err := transport.NewCertificate()
	require.NoError(t, err)
	ln, err := quic.Listen(ctx, "127.0.0.1:0", sc, transport.ExpectFingerprint(cc.Fingerprint()))
	require.NoError(t, err)
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
