package transport

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A peer that stops answering without closing anything (a cut cable, a
// frozen host) is declared lost once the heartbeat window has passed.
func TestHeartbeatFindsASilentPeer(t *testing.T) {
	for name, pair := range map[string]func(testing.TB) (Stream, Stream){"pipe": pipePair, "tcp": tcpPair} {
		t.Run(name, func(t *testing.T) {
			a, frozen := pair(t)
			defer frozen.Close()
			const window = 300 * time.Millisecond
			fail := NewFailure(nil)
			l := NewLinkWith(1, NewConn(a), fail, nil, LinkOptions{Heartbeat: window})
			defer l.Shutdown(false, time.Second)
			l.Begin(context.Background(), Header{Comm: 1, Seq: 1}, nil)
			require.NoError(t, l.Post(make([]byte, 8)))
			start := time.Now()
			err := l.Wait()
			waited := time.Since(start)
			require.ErrorIs(t, err, ErrPeerLost)
			var pe *PeerError
			require.True(t, errors.As(err, &pe))
			assert.Equal(t, 1, pe.Peer)
			assert.Contains(t, err.Error(), "nothing heard")
			assert.GreaterOrEqual(t, waited, window/2)
			assert.Less(t, waited, 10*window)
			t.Logf("silent peer found after %v (window %v)", waited, window)
		})
	}
}

// Two idle links with heartbeats stay up for many windows, and a slow wait
// is reported once.
func TestHeartbeatKeepsAnIdleLinkAlive(t *testing.T) {
	a, b := tcpPair(t)
	const window = 200 * time.Millisecond
	var slowCalls atomic.Int32
	opt := LinkOptions{Heartbeat: window, OnSlow: func(peer int, what string) {
		if peer == 1 && what == "receive" {
			slowCalls.Add(1)
		}
	}}
	fa, fb := NewFailure(nil), NewFailure(nil)
	la := NewLinkWith(1, NewConn(a), fa, nil, opt)
	lb := NewLinkWith(0, NewConn(b), fb, nil, opt)
	defer la.Shutdown(true, time.Second)
	defer lb.Shutdown(true, time.Second)

	// A receive that waits 5 windows for its frame: heartbeats keep both
	// sides alive meanwhile, and the slow timer fires once.
	slow := time.NewTimer(window)
	defer slow.Stop()
	hdr := Header{Comm: 1, Seq: 1}
	la.BeginOp(context.Background(), hdr, nil, slow.C)
	lb.Begin(context.Background(), hdr, nil)
	got := make([]byte, 4)
	require.NoError(t, la.Post(got))
	sent := make(chan error, 1)
	release := time.AfterFunc(5*window, func() {
		tk, err := lb.Send([]byte{1, 2, 3, 4})
		if err == nil {
			err = lb.Flush(tk)
		}
		sent <- err
	})
	defer release.Stop()
	require.NoError(t, la.Wait())
	require.NoError(t, <-sent)
	assert.Equal(t, []byte{1, 2, 3, 4}, got)
	assert.NoError(t, fa.Err())
	assert.NoError(t, fb.Err())
	assert.Equal(t, int32(1), slowCalls.Load())
	heard, seq := la.LastHeard()
	assert.Equal(t, uint64(1), seq)
	assert.WithinDuration(t, time.Now(), heard, 2*window)
}
