package rendezvous

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/transport"
)

func joinWith(ctx context.Context, addr string, id transport.Identity, rank int) <-chan []Entry {
	id.Rank = rank
	res := make(chan []Entry, 1)
	go func() {
		entries, err := JoinWith(ctx, addr, id, func(net.Addr) (Entry, error) {
			return entryOf(rank), nil
		})
		if err != nil {
			entries = nil
		}
		res <- entries
	}()
	return res
}

// entryOf is what rank publishes in these tests: every field set (two
// ranks share a host).
func entryOf(rank int) Entry {
	return Entry{Addr: advertised(rank), Fingerprint: fmt.Sprintf("fp%d", rank), Host: fmt.Sprintf("host%d", rank/2), Local: fmt.Sprintf("@ctl%d", rank)}
}

// Every rank gets every rank's entry, as it registered it: the address,
// the certificate's fingerprint, the host and the shared-memory listener.
func TestJoinWithReturnsFingerprints(t *testing.T) {
	const n = 3
	id := jobID(n)
	s := startServer(t, id)
	chans := make([]<-chan []Entry, n)
	for r := range n {
		chans[r] = joinWith(t.Context(), s.addr, id, r)
	}
	for r := range n {
		var got []Entry
		select {
		case got = <-chans[r]:
		case <-time.After(waitBound):
			t.Fatal("JoinWith did not return")
		}
		require.Len(t, got, n, "rank %d", r)
		for q, e := range got {
			require.Equal(t, entryOf(q), e)
		}
	}
	require.NoError(t, s.wait(t))
}

// A table whose fingerprint was changed on the way (here by a server that
// holds the token but forges an entry) is refused: a fingerprint is trusted
// only with the MAC of the rank that registered it.
func TestJoinWithRefusesAForgedFingerprint(t *testing.T) {
	id := jobID(1)
	ln, err := transport.ListenTCP(t.Context(), "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer conn.Close()
		sid := id
		sid.Rank, sid.Purpose = -1, transport.PurposeRendezvous
		if _, err := transport.ServerHandshake(conn, sid, time.Now().Add(waitBound), nil); err != nil {
			served <- err
			return
		}
		var reg registration
		if err := readMessage(conn, &reg); err != nil {
			served <- err
			return
		}
		served <- writeMessage(conn, reply{Addrs: []string{reg.Addr}, Fingerprints: []string{"forged"}, MACs: [][]byte{reg.MAC}})
	}()
	cid := id
	cid.Rank = 0
	_, err = JoinWith(t.Context(), ln.Addr().String(), cid, func(net.Addr) (Entry, error) {
		return Entry{Addr: "a:1", Fingerprint: "genuine"}, nil
	})
	require.ErrorIs(t, err, transport.ErrAuth)
	require.NoError(t, <-served)
}
