package collective

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/transport"
)

// A connector makes the connections of a job's communicators: the mesh of
// the communicator New or Local formed (the world), and later those of its
// sub-communicators and point-to-point channels. Every connection belongs to
// one channel, and each channel gets connections of its own, so a
// sub-communicator's frames never queue behind its parent's.
//
// Ranks here are world ranks. The communicators made from one world share
// its connector; the last to close releases it.
type connector interface {
	// connect returns a connection to world rank peer on channel; both ends
	// must ask for it. It waits for the peer at most until ctx ends.
	connect(ctx context.Context, channel uint64, peer int) (transport.Stream, error)
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

// meshConnector connects over the network: the higher world rank of a pair
// dials the lower one's listener, which stays open while any communicator
// of the job does. An accepted connection is handed to whoever asks for its
// (channel, rank); one that arrives first waits for its asker.
type meshConnector struct {
	nw  *network
	ln  peerListener
	id  transport.Identity // this rank's world identity, Purpose peer
	log *slog.Logger

	mu       sync.Mutex
	refs     int
	arrivals map[arrival]chan transport.Stream
	stop     context.CancelFunc
	done     chan struct{} // closed when the accept loop has ended
}

type arrival struct {
	channel uint64
	rank    int
}

func newMeshConnector(nw *network, ln peerListener, id transport.Identity, log *slog.Logger) *meshConnector {
	id.Purpose = transport.PurposePeer
	ctx, stop := context.WithCancel(context.Background())
	m := &meshConnector{
		nw: nw, ln: ln, id: id, log: log,
		refs:     1,
		arrivals: make(map[arrival]chan transport.Stream),
		stop:     stop,
		done:     make(chan struct{}),
	}
	go m.acceptLoop(ctx)
	return m
}

func (m *meshConnector) retain() {
	m.mu.Lock()
	m.refs++
	m.mu.Unlock()
}

// release drops one reference; the last closes the listener, waits for the
// accept loop and closes connections nobody asked for.
func (m *meshConnector) release() {
	m.mu.Lock()
	m.refs--
	last := m.refs == 0
	m.mu.Unlock()
	if !last {
		return
	}
	m.stop()
	_ = m.ln.close()
	<-m.done
	m.nw.close()
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, ch := range m.arrivals {
		select {
		case s := <-ch:
			_ = s.Close()
		default:
		}
		delete(m.arrivals, k)
	}
}

// slot returns the hand-over channel of (channel, rank), made by whichever of
// asker and accept loop comes first.
func (m *meshConnector) slot(a arrival) chan transport.Stream {
	m.mu.Lock()
	defer m.mu.Unlock()
	ch, ok := m.arrivals[a]
	if !ok {
		ch = make(chan transport.Stream, 1)
		m.arrivals[a] = ch
	}
	return ch
}

func (m *meshConnector) connect(ctx context.Context, channel uint64, peer int) (transport.Stream, error) {
	if m.id.Rank > peer {
		return m.dial(ctx, channel, peer)
	}
	a := arrival{channel, peer}
	ch := m.slot(a)
	defer func() {
		m.mu.Lock()
		delete(m.arrivals, a)
		m.mu.Unlock()
	}()
	select {
	case s := <-ch:
		return s, nil
	case <-m.done:
		return nil, fmt.Errorf("waiting for rank %d to connect: %w", peer, net.ErrClosed)
	case <-ctx.Done():
		// It may have come in just now: nobody else will take it.
		select {
		case s := <-ch:
			_ = s.Close()
		default:
		}
		return nil, fmt.Errorf("waiting for rank %d to connect: %w", peer, context.Cause(ctx))
	}
}

func (m *meshConnector) dial(ctx context.Context, channel uint64, peer int) (transport.Stream, error) {
	addr := m.nw.peers[peer].Addr
	conn, err := m.nw.dial(ctx, peer)
	if err != nil {
		return nil, fmt.Errorf("dialing rank %d at %s: %w", peer, addr, err)
	}
	id := m.id
	id.Channel = channel
	h, err := transport.ClientHandshake(conn, id, handshakeDeadline(ctx))
	if err == nil && h.Rank != peer {
		err = fmt.Errorf("%w: %s answered as rank %d, expected rank %d", transport.ErrProtocol, addr, h.Rank, peer)
	}
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("connecting to rank %d: %w", peer, err)
	}
	return conn, nil
}

// handshakeDeadline bounds one handshake: 30 s, or less if ctx says so.
func handshakeDeadline(ctx context.Context) time.Time {
	d := time.Now().Add(30 * time.Second)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	return d
}

// acceptLoop accepts peer connections until release. Each is secured and
// authenticated on its own goroutine, so a stranger that says nothing holds
// up only itself; refused ones are logged.
func (m *meshConnector) acceptLoop(ctx context.Context) {
	defer close(m.done)
	var hs sync.WaitGroup
	defer hs.Wait()
	for {
		conn, err := m.ln.accept(ctx)
		if errors.Is(err, transport.ErrAuth) || errors.Is(err, transport.ErrProtocol) {
			m.log.Warn("ringo: refused a peer connection", "err", err)
			continue
		}
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				m.log.Warn("ringo: no longer accepting peer connections", "err", err)
			}
			return
		}
		hs.Add(1)
		go func() {
			defer hs.Done()
			m.admit(ctx, conn)
		}()
	}
}

func (m *meshConnector) admit(ctx context.Context, conn transport.Stream) {
	from := remoteAddr(conn)
	hctx, cancel := context.WithDeadline(ctx, handshakeDeadline(ctx))
	defer cancel()
	raw := conn // not conn itself: secure replaces it while the func may run
	stopOnCancel := context.AfterFunc(hctx, func() { _ = raw.SetDeadline(time.Now()) })
	defer stopOnCancel()
	conn, err := m.ln.secure(hctx, conn)
	if err != nil {
		m.log.Warn("ringo: refused a peer connection", "from", from, "err", err)
		return
	}
	id := m.id
	h, err := transport.ServerHandshake(conn, id, handshakeDeadline(hctx), func(h transport.Hello) error {
		if h.Size != id.Size || h.Rank <= id.Rank || h.Rank >= id.Size {
			return fmt.Errorf("rank %d of world size %d is not expected to dial rank %d of %d", h.Rank, h.Size, id.Rank, id.Size)
		}
		return m.nw.checkPeer(conn, h.Rank)
	})
	if err == nil {
		select {
		case m.slot(arrival{h.Channel, h.Rank}) <- conn:
			return
		default:
			err = fmt.Errorf("rank %d is already connected on channel %#x", h.Rank, h.Channel)
		}
	}
	m.log.Warn("ringo: refused a peer connection", "from", from, "err", err)
	_ = conn.Close()
}

// pipeHub connects the ranks of Local: in-process pipes, made on demand by
// whichever end asks first.
type pipeHub struct {
	mu   sync.Mutex
	refs int
	ends map[pipeKey]transport.Stream // the other end, waiting for its rank
}

type pipeKey struct {
	channel  uint64
	from, to int
}

// pipeEnd is one rank's view of the hub.
type pipeEnd struct {
	hub  *pipeHub
	self int
}

func newPipeHub(ranks int) *pipeHub {
	return &pipeHub{refs: ranks, ends: make(map[pipeKey]transport.Stream)}
}

func (e pipeEnd) connect(_ context.Context, channel uint64, peer int) (transport.Stream, error) {
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
	mine, theirs := transport.Pipe()
	h.ends[pipeKey{channel, e.self, peer}] = theirs
	return mine, nil
}

func (e pipeEnd) retain() {
	e.hub.mu.Lock()
	e.hub.refs++
	e.hub.mu.Unlock()
}

func (e pipeEnd) release() {
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
}

// soloConnector serves a world of one rank, which has nobody to connect to.
type soloConnector struct{}

func (soloConnector) connect(_ context.Context, _ uint64, peer int) (transport.Stream, error) {
	return nil, fmt.Errorf("connecting to rank %d: a world of one rank has no peers", peer)
}
func (soloConnector) retain()  {}
func (soloConnector) release() {}

// world is a communicator's place among the communicators of its job.
type world struct {
	conn connector
	// ranks maps the communicator's ranks to world ranks (nil: the same).
	ranks   []int
	channel uint64 // 0 for the world itself
}

func (w world) rank(r int) int {
	if w.ranks == nil {
		return r
	}
	return w.ranks[r]
}
