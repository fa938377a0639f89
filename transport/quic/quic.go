// Package quic is ringo's QUIC transport, on github.com/quic-go/quic-go. A
// link between two ranks is one bidirectional QUIC stream; it is a
// transport.Stream like a TCP connection, so the same framing, handshake and
// links run over it. A Dialer keeps one QUIC connection per peer and opens
// every further link to that peer (a sub-communicator's, a point-to-point
// channel's) as a new stream on it; a connection closes once its last
// stream has.
//
// TLS 1.3 is always on. Each rank makes an ephemeral self-signed certificate
// (transport.NewCertificate); a dialer accepts the listener only if its
// certificate has the fingerprint the listener published through the
// rendezvous, and a listener accepts a dialer only if allow approves the
// fingerprint of its certificate. The job-token handshake still runs on the
// stream afterwards.
//
// UDP buffers: quic-go asks the kernel for 7 MiB socket buffers. A process
// with CAP_NET_ADMIN (root) gets them whatever net.core.rmem_max says
// (SO_RCVBUFFORCE). Without it, and with limits below 7 MiB (the common
// default is 212992), quic-go logs once per process "failed to sufficiently
// increase receive buffer size (was: 208 kiB, wanted: 7168 kiB, got: 416
// kiB)" and runs with 416 KiB: bursts overflow the socket, the kernel drops
// datagrams and quic-go retransmits them and slows down. Measured on the
// netns testbed (README.md): about 4,000 drops per 4-rank 16 MiB ringbench
// run on 1 Gbit/s links and 300-700 with 2 ranks on 250 Mbit/s links, none
// with 7 MiB, and in neither case a busbw change beyond the noise; faster
// links or longer round trips, where a loss costs more, were not measured.
// Raise the limits (sysctl -w net.core.rmem_max=7500000
// net.core.wmem_max=7500000) on hosts that run QUIC jobs, or set
// QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true to silence the warning.
// Nothing here depends on the limits.
//
// Throughput: quic-go spends 5-12 ns of CPU per byte a link carries
// (sender and receiver, user and kernel; TCP about 2 ns on the same
// testbed), in packets of at most 1452 bytes, so a link is CPU-bound long
// before a fast network is. README.md has the measurements.
package quic

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	qgo "github.com/quic-go/quic-go"

	"github.com/ringo-ml/ringo/transport"
)

// Flow-control windows: quic-go grows a window from initialWindow up to the
// maximum as the RTT asks for it. The maxima cover 10 Gbit/s at ~10 ms RTT
// (the window must hold bandwidth × RTT) and bound a link's memory. On
// loopback, quic-go's defaults (512 KiB growing to 6 MiB per stream, 15 MiB
// per connection) and 4x these maxima gave the same AllReduce busbw and
// CPU per byte as these, within the noise of a shared machine
// (BenchmarkVersusRaw): the CPU, not the window, limits a link there.
const (
	streamWindow     = 16 << 20
	connectionWindow = 24 << 20
	initialWindow    = 2 << 20
)

// handshakeTimeout bounds a connection's handshake and the opening of its stream.
const handshakeTimeout = 10 * time.Second

// lingerTimeout bounds how long a closed link keeps its QUIC connection open
// so that the peer can read what was written before Close (see Stream.Close).
const lingerTimeout = 2 * time.Second

// preamble is the first bytes a dialer writes on its stream: a QUIC stream is
// announced to the peer only once it carries data, and the listener must
// accept it before the protocol above decides who speaks first.
var preamble = [4]byte{'R', 'Q', 'S', '1'}

// Application error codes of CONNECTION_CLOSE.
const (
	codeClosed  qgo.ApplicationErrorCode = 0
	codeRefused qgo.ApplicationErrorCode = 1
)

// streamClosed is the STOP_SENDING code of a closed link that stopped
// reading what its peer still writes.
const streamClosed qgo.StreamErrorCode = 0

func config() *qgo.Config {
	return &qgo.Config{
		HandshakeIdleTimeout:           handshakeTimeout,
		MaxIdleTimeout:                 30 * time.Second,
		KeepAlivePeriod:                5 * time.Second,
		MaxIncomingStreams:             maxStreams,
		MaxIncomingUniStreams:          -1,
		InitialStreamReceiveWindow:     initialWindow,
		MaxStreamReceiveWindow:         streamWindow,
		InitialConnectionReceiveWindow: initialWindow,
		MaxConnectionReceiveWindow:     connectionWindow,
	}
}

// maxStreams bounds the streams a peer may have open on one connection:
// one per communicator and point-to-point channel between two ranks.
const maxStreams = 1024

// conn is a QUIC connection shared by the links (streams) on it. It closes
// once nothing holds it: no stream, no Listener still accepting streams on
// it, no Dialer keeping it for reuse.
type conn struct {
	*qgo.Conn
	refs    atomic.Int64
	release func() // frees what the connection ran on, once it is closed
}

func newConn(c *qgo.Conn, release func()) *conn {
	cc := &conn{Conn: c, release: release}
	cc.refs.Store(1)
	return cc
}

// ref takes a reference, unless the connection is already let go.
func (c *conn) ref() bool {
	for {
		n := c.refs.Load()
		if n == 0 {
			return false
		}
		if c.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (c *conn) unref() {
	if c.refs.Add(-1) == 0 {
		_ = c.CloseWithError(codeClosed, "")
		c.release()
	}
}

// Listener accepts links on one UDP socket: the first stream of each new
// connection, and every stream its dialer opens on it later.
type Listener struct {
	udp   net.PacketConn
	tr    *qgo.Transport
	ln    *qgo.Listener
	allow func(string) error

	// refs counts the listener and every accepted connection: the socket
	// closes when the last of them does.
	refs     atomic.Int64
	once     sync.Once
	incoming chan accepted // links (or one connection's refusal) for Accept
	stop     chan struct{} // closed by Close
	serving  sync.WaitGroup
}

type accepted struct {
	s   *Stream
	err error
	// The first stream of a connection comes with its certificate's
	// fingerprint, for Accept to judge, and waits for the verdict.
	fingerprint string
	verdict     chan error
}

// Listen listens for links on the UDP address addr ("host:port"; port 0
// picks one), presenting cert. allow is given the fingerprint of each
// dialer's certificate when Accept takes its connection (not during the
// handshake, so it may depend on what the caller learns after Listen); an
// error refuses the connection. A nil allow accepts any certificate.
func Listen(ctx context.Context, addr string, cert *transport.Certificate, allow func(fingerprint string) error) (*Listener, error) {
	// The socket is handed to quic-go as the *net.UDPConn ListenPacket
	// makes, never wrapped: quic-go recognises it and sends with GSO and
	// receives with recvmmsg. Without GSO (QUIC_GO_DISABLE_GSO=true) a
	// byte cost twice the CPU (14 against 7 ns on one stream) and a 4-rank
	// AllReduce's busbw fell from 0.07-0.085 to 0.04-0.05 GB/s.
	var lc net.ListenConfig
	udp, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return nil, err
	}
	tr := &qgo.Transport{Conn: udp}
	ln, err := tr.Listen(cert.ServerConfig(nil), config())
	if err != nil {
		_ = tr.Close()
		_ = udp.Close()
		return nil, err
	}
	l := &Listener{udp: udp, tr: tr, ln: ln, allow: allow, incoming: make(chan accepted), stop: make(chan struct{})}
	l.refs.Store(1)
	l.serving.Add(1)
	go l.acceptConns()
	return l, nil
}

// Addr is the UDP address the listener is bound to.
func (l *Listener) Addr() net.Addr { return l.udp.LocalAddr() }

// Close stops accepting connections and streams; links already accepted
// stay up.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.stop)
		err = l.ln.Close()
		l.serving.Wait()
		l.unref()
	})
	return err
}

func (l *Listener) unref() {
	if l.refs.Add(-1) == 0 {
		_ = l.tr.Close()
		_ = l.udp.Close()
	}
}

// Accept returns the next link. An error that wraps transport.ErrAuth (a
// certificate allow refused) or transport.ErrProtocol (a connection that
// opened no stream) concerns one connection only: the caller may accept
// again. Other errors (net.ErrClosed, ctx's) end the listener's use.
func (l *Listener) Accept(ctx context.Context) (transport.Stream, error) {
	select {
	case a := <-l.incoming:
		if a.err != nil {
			return nil, a.err
		}
		if a.verdict != nil {
			var err error
			if l.allow != nil {
				err = l.allow(a.fingerprint)
			}
			a.verdict <- err
			if err != nil {
				return nil, fmt.Errorf("quic: refused %s: %w", a.s.RemoteAddr(), err)
			}
		}
		return a.s, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-l.stop:
		return nil, net.ErrClosed
	}
}

// acceptConns takes each new connection and serves it on a goroutine of its
// own, so that a slow one holds up only itself.
func (l *Listener) acceptConns() {
	defer l.serving.Done()
	for {
		c, err := l.ln.Accept(context.Background())
		if err != nil {
			return // closed
		}
		l.serving.Add(1)
		go l.serveConn(c)
	}
}

// hand gives a link (or a refusal) to Accept, unless the listener closes first.
func (l *Listener) hand(a accepted) bool {
	select {
	case l.incoming <- a:
		return true
	case <-l.stop:
		if a.s != nil {
			_ = a.s.Close()
		}
		return false
	}
}

// serveConn accepts a new connection's streams until the connection ends or
// the listener closes. The first stream must come within handshakeTimeout;
// Accept judges its certificate (allow runs on the caller's goroutine, so it
// may depend on what the caller learns after Listen) before any other
// stream of the connection is accepted.
func (l *Listener) serveConn(qc *qgo.Conn) {
	defer l.serving.Done()
	fp, ok := fingerprint(qc)
	if !ok {
		_ = qc.CloseWithError(codeRefused, "certificate refused")
		l.hand(accepted{err: fmt.Errorf("quic: refused %s: %w: no certificate", qc.RemoteAddr(), transport.ErrAuth)})
		return
	}
	l.refs.Add(1)
	c := newConn(qc, l.unref) // this reference: "streams may still come"
	defer c.unref()
	ctx, cancel := context.WithCancel(qc.Context())
	defer cancel()
	go func() {
		select {
		case <-l.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for first := true; ; first = false {
		sctx, scancel := ctx, context.CancelFunc(func() {})
		if first {
			sctx, scancel = context.WithTimeout(ctx, handshakeTimeout)
		}
		str, err := c.AcceptStream(sctx)
		if err == nil {
			if err = readPreamble(sctx, ctx, str); err != nil {
				str.CancelRead(qgo.StreamErrorCode(codeRefused))
				str.CancelWrite(qgo.StreamErrorCode(codeRefused))
			}
		}
		scancel()
		switch {
		case err != nil && first:
			_ = qc.CloseWithError(codeRefused, "no stream")
			l.hand(accepted{err: fmt.Errorf("%w: quic: %s opened no ringo stream: %w", transport.ErrProtocol, qc.RemoteAddr(), err)})
			return
		case err != nil && ctx.Err() != nil:
			return // the connection ended, or the listener closed
		case err != nil:
			continue // one bad stream; the connection goes on
		}
		c.ref()
		a := accepted{s: newStream(str, c)}
		if first {
			a.fingerprint, a.verdict = fp, make(chan error, 1)
		}
		if !l.hand(a) {
			return
		}
		if first {
			select {
			case err := <-a.verdict:
				if err != nil {
					_ = a.s.Close()
					_ = qc.CloseWithError(codeRefused, "certificate refused")
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}
}

// readPreamble reads a new stream's preamble, within handshakeTimeout (and
// the deadline of ctx, if earlier); stop ends the wait early.
func readPreamble(ctx, stop context.Context, str *qgo.Stream) error {
	d := time.Now().Add(handshakeTimeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	_ = str.SetReadDeadline(d)
	defer str.SetReadDeadline(time.Time{})
	unblock := context.AfterFunc(stop, func() { _ = str.SetReadDeadline(time.Now()) })
	defer unblock()
	var got [len(preamble)]byte
	if _, err := io.ReadFull(str, got[:]); err != nil {
		return err
	}
	if got != preamble {
		return fmt.Errorf("stream starts with %q", got[:])
	}
	return nil
}

func fingerprint(c *qgo.Conn) (string, bool) {
	certs := c.ConnectionState().TLS.PeerCertificates
	if len(certs) == 0 {
		return "", false
	}
	return transport.Fingerprint(certs[0].Raw), true
}

// Dial opens a link to the listener at addr (UDP host:port) on a
// connection of its own (from a UDP socket of its own), presenting cert and
// accepting the listener only if its certificate's fingerprint is peer.
func Dial(ctx context.Context, addr string, cert *transport.Certificate, peer string) (transport.Stream, error) {
	c, err := dialConn(ctx, addr, cert, peer)
	if err != nil {
		return nil, err
	}
	return openStream(ctx, c, addr) // takes over the dial's reference
}

func dialConn(ctx context.Context, addr string, cert *transport.Certificate, peer string) (*conn, error) {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	udp, err := lc.ListenPacket(ctx, "udp", ":0") // a *net.UDPConn, as in Listen
	if err != nil {
		return nil, err
	}
	tr := &qgo.Transport{Conn: udp}
	release := func() {
		_ = tr.Close()
		_ = udp.Close()
	}
	c, err := tr.Dial(ctx, raddr, cert.ClientConfig(peer), config())
	if err != nil {
		release()
		return nil, fmt.Errorf("quic: dial %s: %w", addr, err)
	}
	return newConn(c, release), nil
}

// openStream opens a link on c, to which the caller has taken a reference
// for it: the link's on success, dropped on failure.
func openStream(ctx context.Context, c *conn, addr string) (*Stream, error) {
	octx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	str, err := c.OpenStreamSync(octx)
	if err == nil {
		_ = str.SetWriteDeadline(time.Now().Add(handshakeTimeout))
		_, err = str.Write(preamble[:])
		_ = str.SetWriteDeadline(time.Time{})
		if err != nil {
			str.CancelRead(qgo.StreamErrorCode(codeClosed))
			str.CancelWrite(qgo.StreamErrorCode(codeClosed))
		}
	}
	if err != nil {
		c.unref()
		return nil, fmt.Errorf("quic: open stream to %s: %w", addr, err)
	}
	return newStream(str, c), nil
}

// Dialer dials links and keeps their connections: a later Dial to the same
// listener and certificate opens a new stream on the same connection, so
// two ranks share one QUIC connection (one handshake, one congestion
// controller) whatever the number of communicators between them. Close
// lets the kept connections go; each closes once its last link has.
type Dialer struct {
	cert *transport.Certificate

	mu     sync.Mutex
	conns  map[dialKey]*conn
	closed bool
}

type dialKey struct{ addr, peer string }

// NewDialer returns a Dialer presenting cert.
func NewDialer(cert *transport.Certificate) *Dialer {
	return &Dialer{cert: cert, conns: make(map[dialKey]*conn)}
}

// Dial opens a link to the listener at addr whose certificate has the
// fingerprint peer: a new stream on the kept connection, or on a new one.
func (d *Dialer) Dial(ctx context.Context, addr, peer string) (transport.Stream, error) {
	key := dialKey{addr, peer}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, fmt.Errorf("quic: dial %s: %w", addr, net.ErrClosed)
	}
	c := d.conns[key]
	if c != nil && !c.ref() {
		c = nil
	}
	d.mu.Unlock()
	if c != nil {
		s, err := openStream(ctx, c, addr)
		if err == nil {
			return s, nil
		}
		// The kept connection is gone (the peer closed it, or it timed out).
		d.forget(key, c)
	}
	c, err := dialConn(ctx, addr, d.cert, peer)
	if err != nil {
		return nil, err
	}
	c.ref() // the link's; the dial's is the Dialer's
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		c.unref()
	} else {
		old := d.conns[key]
		d.conns[key] = c
		d.mu.Unlock()
		if old != nil {
			old.unref()
		}
	}
	return openStream(ctx, c, addr)
}

// forget drops the Dialer's reference to c, if it still keeps it for key.
func (d *Dialer) forget(key dialKey, c *conn) {
	d.mu.Lock()
	kept := d.conns[key] == c
	if kept {
		delete(d.conns, key)
	}
	d.mu.Unlock()
	if kept {
		c.unref()
	}
}

// Close lets every kept connection go; links on them stay up until closed.
func (d *Dialer) Close() {
	d.mu.Lock()
	conns := d.conns
	d.conns, d.closed = nil, true
	d.mu.Unlock()
	for _, c := range conns {
		c.unref()
	}
}

// Stream is one link: a QUIC stream, holding a reference to its connection.
type Stream struct {
	*qgo.Stream
	conn *conn

	readMu sync.Mutex // held by Read; Close's drain takes it after the reader left
	closed atomic.Bool
	once   sync.Once
	done   chan struct{} // closed once the connection is closed and released
}

func newStream(s *qgo.Stream, c *conn) *Stream {
	st := &Stream{Stream: s, conn: c, done: make(chan struct{})}
	if h := onNewStream; h != nil {
		h(st)
	}
	return st
}

// onNewStream, when set, is told of every link made. The package's
// benchmarks use it to read the QUIC statistics (loss, RTT) of the links a
// communicator makes; it is nil otherwise.
var onNewStream func(*Stream)

var _ transport.Stream = (*Stream)(nil)

// Read reads from the stream. After Close it returns net.ErrClosed; when
// the peer closed its link it returns io.EOF.
func (s *Stream) Read(p []byte) (int, error) {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := s.Stream.Read(p)
	if err != nil {
		err = s.mapError(err)
	}
	return n, err
}

// Write writes to the stream. After Close it returns net.ErrClosed.
func (s *Stream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	if err != nil {
		err = s.mapError(err)
	}
	return n, err
}

func (s *Stream) mapError(err error) error {
	if s.closed.Load() {
		return net.ErrClosed
	}
	var ae *qgo.ApplicationError
	if errors.As(err, &ae) && ae.Remote && ae.ErrorCode == codeClosed {
		return io.EOF // the peer closed its link
	}
	var se *qgo.StreamError
	if errors.As(err, &se) && se.Remote && se.ErrorCode == streamClosed {
		// The peer closed its link and stopped reading (see linger).
		return fmt.Errorf("quic: the peer closed its link: %w", io.ErrClosedPipe)
	}
	return err
}

// SetDeadline sets the read and write deadlines.
func (s *Stream) SetDeadline(t time.Time) error {
	if s.closed.Load() {
		return nil
	}
	return s.Stream.SetDeadline(t)
}

// SetReadDeadline sets the read deadline.
func (s *Stream) SetReadDeadline(t time.Time) error {
	if s.closed.Load() {
		return nil
	}
	return s.Stream.SetReadDeadline(t)
}

// ConnectionState is the TLS state of the link's connection (see
// transport.PeerFingerprint).
func (s *Stream) ConnectionState() tls.ConnectionState { return s.conn.ConnectionState().TLS }

// LocalAddr is the local UDP address.
func (s *Stream) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// RemoteAddr is the peer's UDP address.
func (s *Stream) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// Close ends the link. It unblocks a Read or Write in progress (they return
// net.ErrClosed) and ends the stream after what was written (FIN), so the
// peer reads everything and then io.EOF, as over TCP. Closing the QUIC
// connection at once would discard data the peer has not read yet, so the
// connection lingers until the peer has closed its side too (or
// lingerTimeout passes) and is closed then. Unlike TCP's, QUIC's sending
// happens in this process: Close waits a few round trips (at most
// lingerTimeout) for the peer to close, so that a program that exits
// right after Close has put its last bytes on the wire; the rest of the
// linger runs in the background (Done).
func (s *Stream) Close() error {
	s.once.Do(func() {
		s.closed.Store(true)
		now := time.Now()
		_ = s.Stream.SetWriteDeadline(now)
		_ = s.Stream.Close()
		_ = s.Stream.SetReadDeadline(now)
		go s.linger()
		wait := min(max(4*s.conn.ConnectionStats().SmoothedRTT, 20*time.Millisecond), lingerTimeout)
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-s.done:
		case <-t.C:
		}
	})
	return nil
}

func (s *Stream) linger() {
	defer close(s.done)
	defer s.conn.unref()
	s.readMu.Lock() // the reader has left
	defer s.readMu.Unlock()
	_ = s.Stream.SetReadDeadline(time.Now().Add(lingerTimeout))
	var scratch [4096]byte
	var err error
	for err == nil {
		_, err = s.Stream.Read(scratch[:]) // until the peer's FIN, its connection close, or the timeout
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	// A peer still writing after lingerTimeout must learn that nobody
	// reads (STOP_SENDING), as a TCP peer does from a reset: on a
	// connection a Dialer keeps for other links, it would otherwise block
	// for flow control until the connection's idle timeout.
	s.Stream.CancelRead(streamClosed)
	// Its failed write makes it read what this side wrote last (an abort
	// notice, say): closing the connection at once (the deferred unref)
	// would discard that. A few round trips let it.
	t := time.NewTimer(min(max(4*s.conn.ConnectionStats().SmoothedRTT, 100*time.Millisecond), lingerTimeout))
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.conn.Context().Done():
	}
}

// Done is closed once a closed link has released its connection.
func (s *Stream) Done() <-chan struct{} { return s.done }

// Network is the QUIC transport as a transport.Network: its listener is a
// Listener presenting cert, and it dials through a Dialer, so that two
// ranks share one QUIC connection with a stream per link (a communicator's,
// a sub-communicator's, a point-to-point channel's).
type Network struct {
	cert   *transport.Certificate
	dialer *Dialer
}

var _ transport.Network = (*Network)(nil)

// NewNetwork returns the QUIC network presenting cert.
func NewNetwork(cert *transport.Certificate) *Network {
	return &Network{cert: cert, dialer: NewDialer(cert)}
}

// Listen listens on the UDP address addr.
func (n *Network) Listen(ctx context.Context, addr string, allow func(string) error) (transport.Listener, error) {
	ln, err := Listen(ctx, addr, n.cert, allow)
	if err != nil {
		return nil, err
	}
	return networkListener{ln, transport.Endpoint{Addr: ln.Addr().String(), Fingerprint: n.cert.Fingerprint()}}, nil
}

// Dial opens a link to the listener at to: a stream on the connection the
// network keeps to it, or on a new one.
func (n *Network) Dial(ctx context.Context, to transport.Endpoint) (transport.Stream, error) {
	return n.dialer.Dial(ctx, to.Addr, to.Fingerprint)
}

// Cost is TCP loopback's for now: QUIC has not been fitted on its own.
// (Its links spend several times TCP's CPU per byte, see README.md, so a
// fit would likely raise Beta.)
func (n *Network) Cost() transport.Cost { return transport.NewTCPNetwork(nil).Cost() }

// Close lets the kept connections go; links on them stay up until closed.
func (n *Network) Close() error {
	n.dialer.Close()
	return nil
}

// networkListener is a Listener as a transport.Listener. TLS ran in the
// QUIC handshake, and allow judged the certificate in Accept.
type networkListener struct {
	ln *Listener
	ep transport.Endpoint
}

func (l networkListener) Endpoint() transport.Endpoint { return l.ep }
func (l networkListener) Close() error                 { return l.ln.Close() }

func (l networkListener) Accept(ctx context.Context) (transport.Stream, error) {
	return l.ln.Accept(ctx)
}
