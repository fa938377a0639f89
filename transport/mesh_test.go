package transport_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/testlog"
	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/quic"
	"github.com/ringo-ml/ringo/transport/shm"
)

// networks are the Networks a Mesh runs over; each call makes one rank's
// (with a certificate of its own where the network has TLS).
var networks = []struct {
	name string
	make func(t testing.TB) transport.Network
}{
	{"tcp", func(testing.TB) transport.Network { return transport.NewTCPNetwork(nil) }},
	{"tcp+tls", func(t testing.TB) transport.Network { return transport.NewTCPNetwork(newCertTB(t)) }},
	{"quic", func(t testing.TB) transport.Network { return quic.NewNetwork(newCertTB(t)) }},
}

// shmControl is the network of shared memory's control streams (abstract
// Unix sockets, no TLS); meshNetworks are the networks the Mesh tests run
// over: every one of networks and it.
var (
	shmControl = struct {
		name string
		make func(t testing.TB) transport.Network
	}{"shm-control", func(testing.TB) transport.Network { return shm.ControlNetwork() }}
	meshNetworks = append(networks[:len(networks):len(networks)], shmControl)
)

func newCertTB(t testing.TB) *transport.Certificate {
	c, err := transport.NewCertificate()
	require.NoError(t, err)
	return c
}

// meshes makes the meshes of size ranks over networks made by nw, started
// with each other's endpoints, and closes them when the test ends. token
// gives each rank's token (nil: all the same).
func meshes(t *testing.T, size int, nw func(testing.TB) transport.Network, token func(rank int) string, log *slog.Logger) []*transport.Mesh {
	t.Helper()
	ms := make([]*transport.Mesh, size)
	eps := make([]transport.Endpoint, size)
	for r := range size {
		tok := "s3cret"
		if token != nil {
			tok = token(r)
		}
		id := transport.Identity{Token: []byte(tok), Job: "mesh-test", Rank: r, Size: size}
		m, err := transport.ListenMesh(context.Background(), nw(t), "127.0.0.1", id, log)
		require.NoError(t, err)
		t.Cleanup(func() { _ = m.Close() })
		ms[r], eps[r] = m, m.Endpoint()
	}
	for _, m := range ms {
		require.NoError(t, m.Start(eps))
	}
	return ms
}

// connectAll connects every pair of ranks on channel, each rank asking on
// goroutines of its own, and returns streams[r][p] (rank r's stream to p).
func connectAll(t *testing.T, conns []transport.Connector, channel uint64) [][]transport.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
	defer cancel()
	n := len(conns)
	streams := make([][]transport.Stream, n)
	errs := make(chan error, n*n)
	var wg sync.WaitGroup
	for r := range n {
		streams[r] = make([]transport.Stream, n)
		for p := range n {
			if p == r {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := conns[r].Connect(ctx, channel, p)
				if err != nil {
					errs <- fmt.Errorf("rank %d to rank %d on channel %d: %w", r, p, channel, err)
					return
				}
				streams[r][p] = s
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	var all []transport.Stream // closed at once: a QUIC stream lingers until its peer closes
	for r := range n {
		for p, s := range streams[r] {
			if p != r {
				all = append(all, s)
			}
		}
	}
	cleanup(t, all...)
	return streams
}

// requireWired checks that streams[r][p] and streams[p][r] are the two ends
// of one connection: what one writes, naming both ranks and the channel,
// the other reads.
func requireWired(t *testing.T, streams [][]transport.Stream, channel uint64) {
	t.Helper()
	for r := range streams {
		for p := range streams {
			if p == r {
				continue
			}
			msg := []byte(fmt.Sprintf("from %d to %d on %d", r, p, channel))
			werr := make(chan error, 1)
			go func() {
				_, err := streams[r][p].Write(msg)
				werr <- err
			}()
			got := make([]byte, len(msg))
			require.NoError(t, streams[p][r].SetReadDeadline(time.Now().Add(confTimeout)))
			_, err := io.ReadFull(streams[p][r], got)
			require.NoError(t, err)
			require.NoError(t, <-werr)
			require.Equal(t, string(msg), string(got))
		}
	}
}

func asConnectors(ms []*transport.Mesh) []transport.Connector {
	cs := make([]transport.Connector, len(ms))
	for i, m := range ms {
		cs[i] = m
	}
	return cs
}

// Every network connects every pair of ranks, once per channel, and each
// stream reaches the rank and channel it was asked for.
func TestMeshConnectsEveryPairOnEveryChannel(t *testing.T) {
	for _, nw := range meshNetworks {
		t.Run(nw.name, func(t *testing.T) {
			conns := asConnectors(meshes(t, 4, nw.make, nil, nil))
			var wg sync.WaitGroup
			got := make([][][]transport.Stream, 2)
			for i, ch := range []uint64{0, 0x5eed} { // two channels at once
				wg.Add(1)
				go func() {
					defer wg.Done()
					got[i] = connectAll(t, conns, ch)
				}()
			}
			wg.Wait()
			requireWired(t, got[0], 0)
			requireWired(t, got[1], 0x5eed)
			s := got[0][1][0]
			switch nw.name {
			case "tcp":
				assert.IsType(t, &net.TCPConn{}, s)
			case "tcp+tls":
				assert.IsType(t, &tls.Conn{}, s)
			case "quic":
				assert.IsType(t, &quic.Stream{}, s)
			case "shm-control":
				assert.IsType(t, &net.UnixConn{}, s)
			}
			_, isTLS := transport.PeerFingerprint(s)
			assert.Equal(t, nw.name == "tcp+tls" || nw.name == "quic", isTLS)
		})
	}
}

// A rank without the job token is refused: its dial fails with ErrAuth, and
// the rank it dialed logs the refusal and never hands the stream out.
func TestMeshRefusesAWrongToken(t *testing.T) {
	for _, nw := range meshNetworks {
		t.Run(nw.name, func(t *testing.T) {
			var logs testlog.Buffer
			ms := meshes(t, 2, nw.make, func(r int) string { return []string{"right", "wrong"}[r] }, logs.Logger(slog.LevelInfo))
			ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
			defer cancel()
			_, err := ms[1].Connect(ctx, 0, 0)
			require.ErrorIs(t, err, transport.ErrAuth)
			short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancelShort()
			_, err = ms[0].Connect(short, 0, 1)
			require.ErrorIs(t, err, context.DeadlineExceeded, "nothing was admitted")
			logs.WaitFor(t, `refused a connection" purpose=peer`, confTimeout)
		})
	}
}

// Connect refuses what no mesh can do, with an error rather than a hang.
func TestMeshRefusesBadRequests(t *testing.T) {
	nw := transport.NewTCPNetwork(nil)
	m, err := transport.ListenMesh(context.Background(), nw, "127.0.0.1", transport.Identity{Rank: 0, Size: 2}, nil)
	require.NoError(t, err)
	defer m.Close()
	ctx := context.Background()
	_, err = m.Connect(ctx, 0, 1)
	require.ErrorContains(t, err, "not started")
	require.Error(t, m.Start([]transport.Endpoint{{}}), "one endpoint for two ranks")
	require.NoError(t, m.Start([]transport.Endpoint{m.Endpoint(), {Addr: "127.0.0.1:1"}}))
	for _, peer := range []int{-1, 0, 2} {
		_, err = m.Connect(ctx, 0, peer)
		require.Error(t, err, "peer %d", peer)
	}
	_, err = transport.ListenMesh(ctx, nw, "127.0.0.1", transport.Identity{Rank: 2, Size: 2}, nil)
	require.Error(t, err)

	// On a TLS network every rank must publish a fingerprint.
	tm, err := transport.ListenMesh(ctx, transport.NewTCPNetwork(newCertTB(t)), "127.0.0.1", transport.Identity{Rank: 0, Size: 2}, nil)
	require.NoError(t, err)
	defer tm.Close()
	require.ErrorContains(t, tm.Start([]transport.Endpoint{tm.Endpoint(), {Addr: "127.0.0.1:1"}}), "rank 1 registered no certificate fingerprint")
}

// A closed mesh ends the waits of its askers and makes no more streams.
func TestMeshCloseEndsWaits(t *testing.T) {
	ms := meshes(t, 2, networks[0].make, nil, nil)
	errc := make(chan error, 1)
	go func() {
		_, err := ms[0].Connect(context.Background(), 3, 1) // rank 1 never dials
		errc <- err
	}()
	require.NoError(t, ms[0].Close())
	select {
	case err := <-errc:
		require.ErrorIs(t, err, net.ErrClosed)
	case <-time.After(confTimeout):
		t.Fatal("Close did not end the wait")
	}
	_, err := ms[1].Connect(context.Background(), 3, 0)
	require.Error(t, err, "rank 0 no longer listens")
}

// The pipe hub connects at once, whichever rank asks first, once per
// channel; when every rank has closed its connector it makes no more.
func TestPipeHub(t *testing.T) {
	hub := transport.NewPipeHub(3)
	conns := []transport.Connector{hub.Connector(0), hub.Connector(1), hub.Connector(2)}
	for _, ch := range []uint64{0, 9} {
		requireWired(t, connectAll(t, conns, ch), ch)
	}
	// One end made and never asked for is closed with the hub.
	orphan, err := conns[0].Connect(context.Background(), 77, 1)
	require.NoError(t, err)
	defer orphan.Close()
	for _, c := range conns[:2] {
		require.NoError(t, c.Close())
		require.NoError(t, c.Close(), "idempotent")
	}
	late, err := conns[2].Connect(context.Background(), 78, 0)
	require.NoError(t, err, "rank 2 still holds the hub")
	defer late.Close()
	require.NoError(t, conns[2].Close())
	_, err = conns[2].Connect(context.Background(), 79, 0)
	require.ErrorIs(t, err, net.ErrClosed)
	_, err = orphan.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF, "its other end was closed")
}

// costConnector is a Connector that only prices its links.
type costConnector struct {
	transport.Connector
	c      transport.Cost
	closed int
}

func (c *costConnector) Cost() transport.Cost { return c.c }
func (c *costConnector) Close() error         { c.closed++; return nil }

// A mixed mesh: ranks 0 and 1 share a "host" and talk over the pipe hub;
// rank 2 reaches both over TCP. Each rank routes every peer to the right
// connector, and every pair is wired to the right partner.
func TestPerPeerMixedMesh(t *testing.T) {
	hub := transport.NewPipeHub(2)
	tcp := meshes(t, 3, networks[0].make, nil, nil)
	conns := []transport.Connector{
		transport.PerPeer([]transport.Connector{nil, hub.Connector(0), tcp[0]}),
		transport.PerPeer([]transport.Connector{hub.Connector(1), nil, tcp[1]}),
		transport.PerPeer([]transport.Connector{tcp[2], tcp[2], nil}),
	}
	for _, ch := range []uint64{0, 42} {
		streams := connectAll(t, conns, ch)
		requireWired(t, streams, ch)
		_, tcp01 := streams[0][1].(*net.TCPConn)
		assert.False(t, tcp01, "ranks 0 and 1 talk through the hub")
		for _, s := range []transport.Stream{streams[0][2], streams[2][0], streams[1][2], streams[2][1]} {
			assert.IsType(t, &net.TCPConn{}, s)
		}
	}
	_, err := conns[0].Connect(context.Background(), 0, 0)
	require.Error(t, err, "no route to itself")
	_, err = conns[0].Connect(context.Background(), 0, 3)
	require.Error(t, err, "no rank 3")
	for _, c := range conns {
		require.NoError(t, c.Close())
	}

	// Cost: the slowest in every term. Close: each connector once.
	fast := &costConnector{c: transport.Cost{Alpha: 1e-6, Beta: 2e-9, Duplex: 2}}
	slow := &costConnector{c: transport.Cost{Alpha: 5e-5, Beta: 1e-9, Duplex: 1}}
	mixed := transport.PerPeer([]transport.Connector{nil, fast, fast, slow})
	assert.Equal(t, transport.Cost{Alpha: 5e-5, Beta: 2e-9, Duplex: 1}, mixed.Cost())
	require.NoError(t, mixed.Close())
	assert.Equal(t, 1, fast.closed)
	assert.Equal(t, 1, slow.closed)
}

// The Mesh's network streams pass the conformance suite too (see
// TestConformance): meshPair makes a pair through two ranks' meshes.
func meshPair(nw func(testing.TB) transport.Network) pairMaker {
	return func(t *testing.T) (transport.Stream, transport.Stream) {
		streams := connectAll(t, asConnectors(meshes(t, 2, nw, nil, nil)), 11)
		return streams[1][0], streams[0][1] // the dialer's end, the listener's
	}
}

// shmPair connects two ranks through shared memory, set up over control
// connectors made by control (closed when the test ends).
func shmPair(control func(t *testing.T) []transport.Connector) pairMaker {
	return func(t *testing.T) (transport.Stream, transport.Stream) {
		ctl := control(t)
		conns := []transport.Connector{shm.Over(0, ctl[0], shm.Options{}), shm.Over(1, ctl[1], shm.Options{})}
		t.Cleanup(func() {
			for _, c := range conns {
				_ = c.Close()
			}
		})
		streams := connectAll(t, conns, 5)
		cleanup(t, streams[1][0], streams[0][1])
		return streams[1][0], streams[0][1]
	}
}

func hubPair(t *testing.T) (transport.Stream, transport.Stream) {
	hub := transport.NewPipeHub(2)
	conns := []transport.Connector{hub.Connector(0), hub.Connector(1)}
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	streams := connectAll(t, conns, 0)
	return streams[1][0], streams[0][1]
}
