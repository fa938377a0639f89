package transport

import (
	"context"
	"fmt"
	"net"
	"sync"
)

// PipeHub connects the ranks of one process by in-process pipes (the mem
// transport): a connection is a Pipe, made by whichever of its two ranks
// asks first and handed to the other when it asks. Nothing is dialed and
// no handshake runs: both ends are in one process, which trusts itself.
// collective.Local runs on it.
type PipeHub struct {
	mu   sync.Mutex
	refs int                // ranks whose Connector is not closed
	ends map[pipeKey]Stream // the other end, waiting for its rank
}

type pipeKey struct {
	channel  uint64
	from, to int
}

// NewPipeHub returns the hub of ranks ranks.
func NewPipeHub(ranks int) *PipeHub {
	return &PipeHub{refs: ranks, ends: make(map[pipeKey]Stream)}
}

// Connector is rank's view of the hub. Closing it lets go of rank's share;
// when every rank's is closed, connections nobody asked for are closed and
// the hub makes no more.
func (h *PipeHub) Connector(rank int) Connector { return &pipeEnd{hub: h, self: rank} }

type pipeEnd struct {
	hub    *PipeHub
	self   int
	closed sync.Once
}

// Connect returns at once: the pipe's other end waits in the hub for peer.
func (e *pipeEnd) Connect(_ context.Context, channel uint64, peer int) (Stream, error) {
	h := e.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if s, ok := h.ends[pipeKey{channel, peer, e.self}]; ok {
		delete(h.ends, pipeKey{channel, peer, e.self})
		return s, nil
	}
	if h.refs == 0 {
		return nil, fmt.Errorf("connecting to rank %d: %w", peer, net.ErrClosed)
	}
	mine, theirs := Pipe()
	h.ends[pipeKey{channel, e.self, peer}] = theirs
	return mine, nil
}

// Cost is, for now, TCP loopback's (see tcpLoopback): pipes have not been
// fitted on their own, and with TCP's constants Local chooses the
// algorithms a TCP job of the same size chooses.
func (e *pipeEnd) Cost() Cost { return tcpLoopback }

func (e *pipeEnd) Close() error {
	e.closed.Do(func() {
		h := e.hub
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.refs--; h.refs > 0 {
			return
		}
		for k, s := range h.ends {
			_ = s.Close()
			delete(h.ends, k)
		}
	})
	return nil
}
