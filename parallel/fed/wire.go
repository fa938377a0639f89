package fed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/quic"
)

// This file is the package's one seam with package transport: which
// Network carries the streams, the server's listener and a client's dial
// (both run the job-token handshake, in transport), and how a message
// becomes a frame. Nothing else in the package touches a stream.

// Transport says how clients reach the server.
type Transport string

// Transports.
const (
	TCP  Transport = "tcp"  // plain TCP (the job token is still proven, never sent)
	TLS  Transport = "tls"  // TCP with TLS 1.3: the server's certificate is checked by fingerprint
	QUIC Transport = "quic" // QUIC (TLS 1.3 by nature), one connection per client
)

func (t Transport) check() error {
	switch t {
	case TCP, TLS, QUIC:
		return nil
	}
	return fmt.Errorf("unknown transport %q (want tcp, tls or quic)", string(t))
}

func (t Transport) secure() bool { return t == TLS || t == QUIC }

// network is the transport's Network, presenting cert (nil over TCP).
func (t Transport) network(cert *transport.Certificate) transport.Network {
	switch t {
	case QUIC:
		return quic.NewNetwork(cert)
	case TLS:
		return transport.NewTCPNetwork(cert)
	}
	return transport.NewTCPNetwork(nil)
}

// fedChannel is the Comm field of every frame of the protocol ("FED1").
const fedChannel = 0x31444546

// handshakeTimeout bounds a connection's TLS and job-token handshakes, and
// then the join that follows them.
const handshakeTimeout = 10 * time.Second

// anyCertificate accepts every client certificate: clients are
// authenticated by the job token, in the handshake that follows TLS.
func anyCertificate(string) error { return nil }

// listen listens on addr ("host:port") for clients that prove the job
// token; log receives the refusals of those that do not.
func listen(ctx context.Context, t Transport, addr string, cert *transport.Certificate, token []byte, job string, log *slog.Logger) (*transport.AuthListener, error) {
	// The server only listens: its network keeps nothing to let go of.
	ln, err := t.network(cert).Listen(ctx, addr, anyCertificate)
	if err != nil {
		return nil, err
	}
	opts := transport.AuthOptions{Timeout: handshakeTimeout, Log: log}
	return transport.NewAuthListener(ln, identity(token, job, true), opts), nil
}

// dial connects to the server at addr and proves the job token; with TLS
// or QUIC it accepts only the certificate whose fingerprint is
// fingerprint.
func dial(ctx context.Context, t Transport, addr, fingerprint string, cert *transport.Certificate, token []byte, job string) (transport.Stream, error) {
	// A network per dial, let go of at once: QUIC's would keep its
	// connection for the next dial, and after a restart of the server that
	// connection leads nowhere. The stream keeps what it needs.
	nw := t.network(cert)
	defer nw.Close()
	s, _, err := transport.DialAuth(ctx, nw, transport.Endpoint{Addr: addr, Fingerprint: fingerprint}, identity(token, job, false))
	return s, err
}

// identity is what the server and its clients say in the handshake: the
// job, and their roles (the server as rank 0, clients without a rank).
func identity(token []byte, job string, server bool) transport.Identity {
	id := transport.Identity{Token: token, Job: job, Rank: -1, Purpose: transport.PurposeFederated}
	if server {
		id.Rank = 0
	}
	return id
}

// permanent says whether a failed connection attempt will fail again the
// same way (a wrong token or job, another protocol version), so that a
// client should stop retrying.
func permanent(err error) bool {
	return errors.Is(err, transport.ErrAuth) || errors.Is(err, transport.ErrProtocol)
}

// wire sends and receives messages on one stream. Sends are serialised by
// the transport.Conn; receives are for one goroutine.
type wire struct {
	c   *transport.Conn
	s   transport.Stream
	in  []byte // the last payload received (reused)
	out []byte // the last payload encoded (reused)
}

func newWire(s transport.Stream) *wire { return &wire{c: transport.NewConn(s), s: s} }

// errGarbage marks bytes that are not a frame of this protocol: the
// stream cannot be trusted to stay in step after them.
var errGarbage = errors.New("not a frame of the federated protocol")

// sendPayload writes one message of kind k whose payload is already
// encoded, within timeout (0: no bound).
func (w *wire) sendPayload(k msgKind, task uint64, payload []byte, timeout time.Duration) error {
	h := transport.Header{Type: transport.Data, Comm: fedChannel, Seq: task, Sig: transport.Signature{Kind: uint8(k)}}
	if timeout > 0 {
		_ = w.s.SetWriteDeadline(time.Now().Add(timeout))
		defer w.s.SetWriteDeadline(time.Time{})
	}
	if err := w.c.WriteFrame(&h, payload); err != nil {
		return fmt.Errorf("sending %v: %w", k, err)
	}
	return nil
}

// send encodes m into the wire's own buffer and writes it; only one
// goroutine may call send at a time.
func (w *wire) send(m message, timeout time.Duration) error {
	w.out = m.appendTo(w.out[:0])
	return w.sendPayload(m.kind(), taskOf(m), w.out, timeout)
}

// recv reads the next message. limit says how many payload bytes a message
// of each kind may have; a frame over it, of another protocol or of an
// unknown kind fails with errGarbage, a payload that does not decode with
// errMalformed (the stream is still in step after it).
func (w *wire) recv(limit func(msgKind) int) (message, error) {
	var h transport.Header
	if err := w.c.ReadHeader(&h); err != nil {
		if errors.Is(err, transport.ErrProtocol) {
			return nil, fmt.Errorf("%w: %w", errGarbage, err)
		}
		return nil, err
	}
	k := msgKind(h.Sig.Kind)
	switch {
	case h.Type != transport.Data || h.Comm != fedChannel:
		return nil, fmt.Errorf("%w: a %v frame on channel %#x", errGarbage, h.Type, h.Comm)
	case k == 0 || k > maxKind:
		return nil, fmt.Errorf("%w: message kind %d", errGarbage, h.Sig.Kind)
	case int64(h.Len) > int64(limit(k)):
		return nil, fmt.Errorf("%w: %v message of %d bytes (at most %d expected)", errGarbage, k, h.Len, limit(k))
	}
	if cap(w.in) < int(h.Len) {
		w.in = make([]byte, h.Len)
	}
	w.in = w.in[:h.Len]
	if err := w.c.ReadPayload(w.in); err != nil {
		return nil, err
	}
	return decodeMessage(k, w.in)
}

func (w *wire) setReadDeadline(t time.Time) { _ = w.s.SetReadDeadline(t) }

func (w *wire) close() error { return w.s.Close() }
