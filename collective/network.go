package collective

import (
	"context"
	"fmt"
	"net"

	"github.com/ringo-ml/ringo/collective/rendezvous"
	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/quic"
)

// network is how a rank makes its peer links: plain TCP, TCP with TLS, or
// QUIC. connectMesh is the same for all three.
type network struct {
	dialer *quic.Dialer           // QUIC only: one connection per peer, a stream per link
	cert   *transport.Certificate // nil for plain TCP
	// peers is the rendezvous table, set before any connection is accepted
	// or dialed.
	peers []rendezvous.Entry
}

func newNetwork(cfg Config) (*network, error) {
	n := &network{}
	isQUIC := cfg.Transport == "quic"
	if isQUIC || cfg.TLS {
		cert, err := transport.NewCertificate()
		if err != nil {
			return nil, err
		}
		n.cert = cert
	}
	if isQUIC {
		n.dialer = quic.NewDialer(n.cert)
	}
	return n, nil
}

// close lets go of what the network keeps for later links (QUIC
// connections); links made stay up until closed.
func (n *network) close() {
	if n.dialer != nil {
		n.dialer.Close()
	}
}

// fingerprint is what this rank publishes with its address ("" without TLS).
func (n *network) fingerprint() string {
	if n.cert == nil {
		return ""
	}
	return n.cert.Fingerprint()
}

// setPeers takes the rendezvous table; with TLS every rank must have
// published a fingerprint.
func (n *network) setPeers(self int, peers []rendezvous.Entry) error {
	if n.cert != nil {
		for r, e := range peers {
			if r != self && e.Fingerprint == "" {
				return fmt.Errorf("rank %d registered no certificate fingerprint: do all ranks use the same transport and TLS setting?", r)
			}
		}
	}
	n.peers = peers
	return nil
}

// allow accepts the certificate of any rank of the job; which rank it is
// is checked against the handshake by checkPeer.
func (n *network) allow(fp string) error {
	for _, e := range n.peers {
		if e.Fingerprint == fp {
			return nil
		}
	}
	return transport.FingerprintIn(nil)(fp)
}

// checkPeer checks that the certificate on s is the one rank registered.
func (n *network) checkPeer(s transport.Stream, rank int) error {
	if n.cert == nil {
		return nil
	}
	got, _ := transport.PeerFingerprint(s)
	return transport.ExpectFingerprint(n.peers[rank].Fingerprint)(got)
}

func (n *network) listen(ctx context.Context, host string) (peerListener, error) {
	addr := net.JoinHostPort(host, "0")
	if n.dialer != nil {
		ln, err := quic.Listen(ctx, addr, n.cert, n.allow)
		if err != nil {
			return nil, err
		}
		return quicListener{ln}, nil
	}
	ln, err := transport.ListenTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	return tcpListener{ln, n.cert, n.allow}, nil
}

// dial connects to rank's advertised address, accepting only the
// certificate rank registered.
func (n *network) dial(ctx context.Context, rank int) (transport.Stream, error) {
	e := n.peers[rank]
	if n.dialer != nil {
		return n.dialer.Dial(ctx, e.Addr, e.Fingerprint)
	}
	conn, err := transport.DialTCP(ctx, e.Addr)
	if err != nil || n.cert == nil {
		return conn, err
	}
	return transport.ClientTLS(ctx, conn, n.cert, e.Fingerprint)
}

// peerListener accepts peer connections. accept does only what is quick;
// secure finishes a connection (the TLS handshake) on its own goroutine, so a
// stranger that says nothing holds up only itself. An accept error that wraps
// transport.ErrAuth or transport.ErrProtocol concerns one connection.
type peerListener interface {
	addr() string
	accept(ctx context.Context) (transport.Stream, error)
	secure(ctx context.Context, s transport.Stream) (transport.Stream, error)
	close() error
}

type tcpListener struct {
	ln    net.Listener
	cert  *transport.Certificate
	allow func(string) error
}

func (l tcpListener) addr() string { return l.ln.Addr().String() }
func (l tcpListener) close() error { return l.ln.Close() }

func (l tcpListener) accept(context.Context) (transport.Stream, error) {
	return l.ln.Accept()
}

func (l tcpListener) secure(ctx context.Context, s transport.Stream) (transport.Stream, error) {
	if l.cert == nil {
		return s, nil
	}
	return transport.ServerTLS(ctx, s.(net.Conn), l.cert, l.allow)
}

type quicListener struct{ ln *quic.Listener }

func (l quicListener) addr() string { return l.ln.Addr().String() }
func (l quicListener) close() error { return l.ln.Close() }

func (l quicListener) accept(ctx context.Context) (transport.Stream, error) {
	return l.ln.Accept(ctx)
}

func (l quicListener) secure(_ context.Context, s transport.Stream) (transport.Stream, error) {
	return s, nil // TLS ran in the QUIC handshake, the fingerprint in accept
}

// remoteAddr names the other end of s for logs.
func remoteAddr(s transport.Stream) string {
	if a, ok := s.(interface{ RemoteAddr() net.Addr }); ok {
		return a.RemoteAddr().String()
	}
	return "?"
}
