package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
)

// Mesh is a Connector over one Network: it connects one rank to the other
// ranks of its job. The higher rank of a pair dials the lower one's
// listener, which stays open until Close; every stream starts with the
// job-token handshake (DialAuth, AuthListener), which names the dialer's
// rank and the channel the stream is for. An accepted stream is handed to
// whoever asks for its (channel, rank); one that arrives first waits for
// its asker.
//
// A Mesh is made in two steps, around the rendezvous: ListenMesh listens
// and tells the Endpoint to publish; Start takes every rank's Endpoint and
// starts accepting.
type Mesh struct {
	nw  Network
	ln  Listener // until Start hands it to auth
	id  Identity // this rank's, Purpose peer
	log *slog.Logger

	peers []Endpoint // set by Start, then never changed

	mu       sync.Mutex
	arrivals map[arrival]chan Stream
	started  bool
	auth     *AuthListener // made by Start
	stop     context.CancelFunc
	done     chan struct{} // closed when the accept loop has ended (or Close, if it never started)
	closed   sync.Once
}

type arrival struct {
	channel uint64
	rank    int
}

// ListenMesh listens on nw for the peers of rank self.Rank of a job of
// self.Size ranks, on a port the system picks at host (an address of this
// machine; "" means every address). self.Token and self.Job are
// what every stream's handshake proves and names. The Mesh owns nw from
// now on: Close closes it. log receives refused connections (nil:
// slog.Default()).
func ListenMesh(ctx context.Context, nw Network, host string, self Identity, log *slog.Logger) (*Mesh, error) {
	if self.Size < 1 || self.Rank < 0 || self.Rank >= self.Size {
		return nil, fmt.Errorf("transport: mesh for rank %d of %d ranks", self.Rank, self.Size)
	}
	if log == nil {
		log = slog.Default()
	}
	self.Purpose, self.Channel = PurposePeer, 0
	m := &Mesh{nw: nw, id: self, log: log, arrivals: make(map[arrival]chan Stream), done: make(chan struct{})}
	ln, err := nw.Listen(ctx, net.JoinHostPort(host, "0"), m.allow)
	if err != nil {
		return nil, err
	}
	m.ln = ln
	return m, nil
}

// Endpoint is what this rank publishes through the rendezvous.
func (m *Mesh) Endpoint() Endpoint { return m.ln.Endpoint() }

// Start takes every rank's Endpoint (peers[r] is rank r's; this rank's own
// is ignored) and starts accepting. On a TLS network every rank must have
// published a fingerprint. Connect works once Start has returned nil.
func (m *Mesh) Start(peers []Endpoint) error {
	if len(peers) != m.id.Size {
		return fmt.Errorf("transport: %d endpoints for %d ranks", len(peers), m.id.Size)
	}
	if m.tls() {
		for r, e := range peers {
			if r != m.id.Rank && e.Fingerprint == "" {
				return fmt.Errorf("rank %d registered no certificate fingerprint: do all ranks use the same transport and TLS setting?", r)
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started || m.stop != nil {
		return fmt.Errorf("transport: mesh started twice, or after Close")
	}
	m.peers = peers
	ctx, stop := context.WithCancel(context.Background())
	m.started, m.stop = true, stop
	m.auth = NewAuthListener(m.ln, m.id, AuthOptions{Check: m.checkDialer, Log: m.log})
	go m.acceptLoop(ctx)
	return nil
}

// tls reports whether the network authenticates with certificates.
func (m *Mesh) tls() bool { return m.ln.Endpoint().Fingerprint != "" }

// Cost is the network's.
func (m *Mesh) Cost() Cost { return m.nw.Cost() }

// Close stops accepting, waits for the accept loop, closes the streams
// nobody asked for and the network. Streams handed out stay up.
func (m *Mesh) Close() error {
	m.closed.Do(func() {
		m.mu.Lock()
		started, auth := m.started, m.auth
		if m.stop == nil {
			m.stop = func() {} // Start refuses from now on
		}
		m.mu.Unlock()
		m.stop()
		if started {
			_ = auth.Close()
			<-m.done
		} else {
			_ = m.ln.Close()
			close(m.done)
		}
		_ = m.nw.Close()
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
	})
	return nil
}

// slot returns the hand-over channel of (channel, rank), made by whichever
// of asker and accept loop comes first.
func (m *Mesh) slot(a arrival) chan Stream {
	m.mu.Lock()
	defer m.mu.Unlock()
	ch, ok := m.arrivals[a]
	if !ok {
		ch = make(chan Stream, 1)
		m.arrivals[a] = ch
	}
	return ch
}

// Connect returns the stream to rank peer on channel: it dials a lower rank
// and waits for a higher one to dial.
func (m *Mesh) Connect(ctx context.Context, channel uint64, peer int) (Stream, error) {
	m.mu.Lock()
	started := m.started
	m.mu.Unlock()
	switch {
	case !started:
		return nil, fmt.Errorf("transport: connecting to rank %d: the mesh is not started", peer)
	case peer < 0 || peer >= m.id.Size || peer == m.id.Rank:
		return nil, fmt.Errorf("transport: rank %d of %d cannot connect to rank %d", m.id.Rank, m.id.Size, peer)
	case m.id.Rank > peer:
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
		return nil, fmt.Errorf("waiting for rank %d to connect: %w", peer, ErrClosed)
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

func (m *Mesh) dial(ctx context.Context, channel uint64, peer int) (Stream, error) {
	id := m.id
	id.Channel = channel
	s, h, err := DialAuth(ctx, m.nw, m.peers[peer], id)
	if err == nil && h.Rank != peer {
		_ = s.Close()
		err = fmt.Errorf("%w: %s answered as rank %d", ErrProtocol, m.peers[peer].Addr, h.Rank)
	}
	if err != nil {
		return nil, fmt.Errorf("connecting to rank %d: %w", peer, err)
	}
	return s, nil
}

// allow accepts the certificate of any rank of the job; which rank it is
// is checked against the handshake by checkPeer.
func (m *Mesh) allow(fp string) error {
	for _, e := range m.peers {
		if e.Fingerprint != "" && e.Fingerprint == fp {
			return nil
		}
	}
	return FingerprintIn(nil)(fp)
}

// checkDialer admits a dialer that proved the token only if it is a
// higher rank of this job, presenting the certificate that rank
// registered.
func (m *Mesh) checkDialer(s Stream, h Hello) error {
	if h.Size != m.id.Size || h.Rank <= m.id.Rank || h.Rank >= m.id.Size {
		return fmt.Errorf("rank %d of world size %d is not expected to dial rank %d of %d", h.Rank, h.Size, m.id.Rank, m.id.Size)
	}
	if !m.tls() {
		return nil
	}
	got, _ := PeerFingerprint(s)
	return ExpectFingerprint(m.peers[h.Rank].Fingerprint)(got)
}

// acceptLoop hands the streams the AuthListener admits to their askers
// until Close.
func (m *Mesh) acceptLoop(ctx context.Context) {
	defer close(m.done)
	for {
		s, h, err := m.auth.Accept(ctx)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, ErrClosed) {
				m.log.Warn("ringo: no longer accepting peer connections", "err", err)
			}
			return
		}
		select {
		case m.slot(arrival{h.Channel, h.Rank}) <- s:
		default:
			m.log.Warn("ringo: refused a connection", "purpose", PurposePeer, "from", remoteAddr(s),
				"err", fmt.Sprintf("rank %d is already connected on channel %#x", h.Rank, h.Channel))
			_ = s.Close()
		}
	}
}

// remoteAddr names the other end of s for logs.
func remoteAddr(s Stream) string {
	if a, ok := s.(interface{ RemoteAddr() net.Addr }); ok {
		return a.RemoteAddr().String()
	}
	return "?"
}

// PerPeer is a Connector that connects to each peer through a Connector of
// its own: byPeer[p] for peer p (nil for this rank). It makes a mixed mesh,
// such as shared memory to the ranks of this host and TCP to the others;
// both ranks of a pair must route it to the same network. Close closes each
// distinct Connector once; Cost is the most expensive of them in each term,
// since a schedule moves at the pace of its slowest link.
func PerPeer(byPeer []Connector) Connector {
	p := &perPeer{byPeer: byPeer}
	for _, c := range byPeer {
		if c != nil && !containsConnector(p.distinct, c) {
			p.distinct = append(p.distinct, c)
		}
	}
	return p
}

type perPeer struct {
	byPeer   []Connector
	distinct []Connector
}

func containsConnector(cs []Connector, c Connector) bool {
	for _, d := range cs {
		if d == c {
			return true
		}
	}
	return false
}

func (p *perPeer) Connect(ctx context.Context, channel uint64, peer int) (Stream, error) {
	if peer < 0 || peer >= len(p.byPeer) || p.byPeer[peer] == nil {
		return nil, fmt.Errorf("transport: no connector for rank %d", peer)
	}
	return p.byPeer[peer].Connect(ctx, channel, peer)
}

func (p *perPeer) Cost() Cost {
	if len(p.distinct) == 0 {
		return Cost{Duplex: 1}
	}
	c := p.distinct[0].Cost()
	for _, d := range p.distinct[1:] {
		c = c.Max(d.Cost())
	}
	return c
}

func (p *perPeer) Close() error {
	var errs []error
	for _, c := range p.distinct {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
