package collective

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"sync"

	"github.com/ringo-ml/ringo/transport"
)

// A connector makes the connections of a job's communicators: the mesh of
// the communicator New or Local formed (the world), and later those of its
// sub-communicators and point-to-point channels. Every connection belongs to
// one channel, and each channel gets connections of its own, so a
// sub-communicator's frames never queue behind its parent's. The
// connections themselves come from a transport.Connector (New's
// transport.Mesh over TCP, TLS or QUIC, Local's transport.PipeHub): this
// package never listens, dials or handshakes.
//
// Ranks here are world ranks. The communicators made from one world share
// its connector; the last to close releases it.
type connector interface {
	// connect returns a connection to world rank peer on channel; both ends
	// must ask for it. It waits for the peer at most until ctx ends.
	connect(ctx context.Context, channel uint64, peer int) (transport.Stream, error)
	// cost is what the cost model should assume of the connections.
	cost() transport.Cost
	retain()
	release()
}

// channelOf derives the channel of a communicator or stream made from
// parent: the same on every rank that derives it from the same inputs, and
// different from its siblings'.
func channelOf(parent uint64, what string, n ...uint64) uint64 {
	b := binary.LittleEndian.AppendUint64(nil, parent)
	b = append(b, what...)
	for _, v := range n {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	h := fnv.New64a()
	h.Write(b)
	if ch := h.Sum64(); ch != 0 {
		return ch
	}
	return 1 // channel 0 is the world's
}

// shared is a transport.Connector shared by the communicators made from one
// world; the last of them to close closes it.
type shared struct {
	tc transport.Connector

	mu   sync.Mutex
	refs int
}

func newShared(tc transport.Connector, refs int) *shared { return &shared{tc: tc, refs: refs} }

func (s *shared) connect(ctx context.Context, channel uint64, peer int) (transport.Stream, error) {
	return s.tc.Connect(ctx, channel, peer)
}

func (s *shared) cost() transport.Cost { return s.tc.Cost() }

func (s *shared) retain() {
	s.mu.Lock()
	s.refs++
	s.mu.Unlock()
}

func (s *shared) release() {
	s.mu.Lock()
	s.refs--
	last := s.refs == 0
	s.mu.Unlock()
	if last {
		_ = s.tc.Close()
	}
}

// soloConnector serves a world of one rank, which has nobody to connect to.
type soloConnector struct{}

func (soloConnector) connect(_ context.Context, _ uint64, peer int) (transport.Stream, error) {
	return nil, fmt.Errorf("connecting to rank %d: a world of one rank has no peers", peer)
}
func (soloConnector) cost() transport.Cost { return transport.NewTCPNetwork(nil).Cost() }
func (soloConnector) retain()              {}
func (soloConnector) release()             {}

// world is a communicator's place among the communicators of its job.
type world struct {
	conn connector
	// ranks maps the communicator's ranks to world ranks (nil: the same).
	ranks   []int
	channel uint64 // 0 for the world itself
	// place is where the world's ranks run (nil: one host, links of the
	// connector's cost).
	place *placement
}

// placement returns w.place, or the one-host placement of its connector.
func (w world) placement() *placement {
	if w.place != nil {
		return w.place
	}
	return onePlace(w.conn.cost())
}

func (w world) rank(r int) int {
	if w.ranks == nil {
		return r
	}
	return w.ranks[r]
}
