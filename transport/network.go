package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"time"
)

// A job's ranks reach each other through two interfaces:
//
//   - a Connector hands out connections to ranks, one per (channel,
//     peer). It is the one interface the layers above see. A Mesh makes
//     them over a Network, authenticated; a PipeHub connects the ranks of
//     one process by in-process pipes; PerPeer routes each peer to a
//     Connector of its own (a mixed mesh: shared memory to the ranks of
//     this host, TCP to the others).
//   - a Network listens and dials, for a Mesh: TCP (TCPNetwork, with or
//     without TLS), QUIC (package quic), and shared memory next. It knows
//     addresses and certificates, not ranks or channels.
//
// Package collective sees only Connectors: it never listens, dials or
// handshakes itself.

// Endpoint is where a rank accepts its peers, as it publishes it through
// the rendezvous.
type Endpoint struct {
	// Addr is the listener's address in its network's terms: host:port for
	// TCP and QUIC.
	Addr string
	// Fingerprint is the certificate the listener presents (see
	// Certificate.Fingerprint), "" for a network without TLS.
	Fingerprint string
}

// Cost is what a network's links cost, for the alpha-beta model a
// communicator chooses its algorithms with: a message of b bytes on the
// critical path takes Alpha + b·Beta seconds.
type Cost struct {
	// Alpha is the latency of one message, in seconds: the wire's, and the
	// wake-ups and system calls of both ends.
	Alpha float64
	// Beta is the time of one byte sent, in seconds (the inverse of the
	// bandwidth one link gives a rank).
	Beta float64
	// Duplex is how many times faster both directions of a link move bytes
	// than one does: 2 for a full-duplex link with a budget of its own per
	// direction, 1 where both directions share one (loopback, where both
	// are copies by the same CPUs).
	Duplex float64
}

// Max is the more expensive of c and d in each term: the cost of a schedule
// that runs over links of both kinds, at the pace of the slowest.
func (c Cost) Max(d Cost) Cost {
	return Cost{Alpha: max(c.Alpha, d.Alpha), Beta: max(c.Beta, d.Beta), Duplex: min(c.Duplex, d.Duplex)}
}

// Network is one way of carrying links: between the ranks of a job, or
// between a server and its clients. It listens and dials streams; the
// handshake that authenticates them (and, in a Mesh, says which rank and
// channel they are for) runs on top: AuthListener and DialAuth.
type Network interface {
	// Listen starts accepting streams on addr, an address of this machine
	// in the network's terms: "host:port" for TCP and QUIC, where port 0
	// picks a free one and an empty host means every address. allow
	// judges the certificate of each dialer of a TLS network by its
	// fingerprint (an error refuses it). It is called only for streams
	// taken by Accept, so it may depend on what the caller learns after
	// Listen returns (the rendezvous table).
	Listen(ctx context.Context, addr string, allow func(fingerprint string) error) (Listener, error)
	// Dial opens a stream to the listener at to. A TLS network accepts the
	// listener only if its certificate has to's fingerprint.
	Dial(ctx context.Context, to Endpoint) (Stream, error)
	// Cost is what the cost model should assume of this network's links.
	Cost() Cost
	// Close lets go of what the network keeps for later streams (QUIC's
	// connections); streams already made stay up until closed.
	Close() error
}

// Listener accepts the streams of one Network.
type Listener interface {
	// Endpoint is what this rank publishes so that peers can dial it.
	Endpoint() Endpoint
	// Accept returns the next stream. It is quick: work that waits on the
	// dialer (a TLS handshake) happens on the stream's first read or write,
	// on the caller's goroutine for that stream, so a stranger that says
	// nothing holds up only itself. An error that wraps ErrAuth or
	// ErrProtocol concerns one dialer, and the caller may accept again;
	// other errors (ErrClosed, ctx's) end the listener's use.
	Accept(ctx context.Context) (Stream, error)
	// Close stops accepting. Streams accepted stay up.
	Close() error
}

// Connector makes the connections between the ranks of one job: to each
// peer, one stream per channel (a communicator, a point-to-point channel),
// so that no channel's frames queue behind another's. Both ranks of a pair
// must ask for their stream on a channel; Connect waits for the peer at
// most until ctx ends. Ranks are the job's (world) ranks.
type Connector interface {
	Connect(ctx context.Context, channel uint64, peer int) (Stream, error)
	// Cost is what the cost model should assume of the connections.
	Cost() Cost
	// Close stops making connections and closes those nobody asked for;
	// connections handed out stay up.
	Close() error
}

// TCPNetwork is the network of TCP links, each in TLS 1.3 when the network
// has a certificate.
type TCPNetwork struct {
	cert *Certificate // nil for plain TCP
}

// NewTCPNetwork returns the TCP network; with a certificate, every link
// runs TLS 1.3 presenting it, and accepts only the peer certificates its
// caller allows (see Network).
func NewTCPNetwork(cert *Certificate) *TCPNetwork { return &TCPNetwork{cert: cert} }

// Listen listens on the TCP address addr.
func (n *TCPNetwork) Listen(ctx context.Context, addr string, allow func(string) error) (Listener, error) {
	ln, err := ListenTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	l := &tcpListener{ln: ln, ep: Endpoint{Addr: ln.Addr().String()}}
	if n.cert != nil {
		l.tls = n.cert.ServerConfig(allow)
		l.ep.Fingerprint = n.cert.Fingerprint()
	}
	return l, nil
}

// Dial connects to to.Addr, and with TLS runs the handshake at once (on
// the caller's goroutine).
func (n *TCPNetwork) Dial(ctx context.Context, to Endpoint) (Stream, error) {
	conn, err := DialTCP(ctx, to.Addr)
	if err != nil {
		return nil, err
	}
	if n.cert == nil {
		return conn, nil
	}
	return ClientTLS(ctx, conn, n.cert, to.Fingerprint)
}

// Cost is the loopback fit (see tcpLoopback).
func (n *TCPNetwork) Cost() Cost { return tcpLoopback }

// Close does nothing: TCP keeps nothing between dials.
func (n *TCPNetwork) Close() error { return nil }

type tcpListener struct {
	ln  net.Listener
	ep  Endpoint
	tls *tls.Config // nil for plain TCP
}

func (l *tcpListener) Endpoint() Endpoint { return l.ep }

// Close is quiet when an Accept's ctx already closed the listener: that
// close is how Accept is interrupted, not the caller's mistake.
func (l *tcpListener) Close() error {
	if err := l.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

func (l *tcpListener) Accept(ctx context.Context) (Stream, error) {
	stop := context.AfterFunc(ctx, func() { _ = l.ln.Close() })
	defer stop()
	conn, err := l.ln.Accept()
	if err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, err
	}
	if l.tls == nil {
		return conn, nil
	}
	// The handshake runs on the stream's first read, on its reader's
	// goroutine, under the deadline the reader sets (ServerHandshake's).
	return tls.Server(conn, l.tls), nil
}

// tcpLoopback is the cost of TCP loopback links, fitted on the development
// machine: a 2-CPU AMD EPYC VM, Go 1.26, ranks as goroutines of one process,
// float32 Sum AllReduce, back-to-back calls (2026-11-23, 23:10 UTC):
//
//	go test -c -o /tmp/coll.test ./collective/ && cd collective &&
//	flock /tmp/ringo-bench.lock /tmp/coll.test -test.run='^$' \
//	    -test.bench='AllReduceModel/ranks=[24]/' -test.benchtime=0.3s -test.count=3 > /tmp/model4.txt
//	RINGO_FIT_GAMMA=0.1 RINGO_FIT=/tmp/model4.txt go test -run=TestFitCostModel -v ./collective/
//
// The fit of Alpha and Beta by least relative squares over the 30 ring,
// doubling and rabenseifner rows (2 and 4 ranks, 8 B to 16 MiB, median of
// 3), with the reduction's own time given (collective's Gamma), printed
// Alpha = 50.5 us, Beta = 1.003 ns/B, rms relative error 25%. The misfit is
// mostly the machine: 4 ranks share 2 CPUs (their per-byte costs run 1.5-2x
// the fit), 16 MiB falls out of cache, and runs taken while other jobs
// loaded the machine differed by up to 2x (an earlier fit to two such runs,
// 2, 3 and 4 ranks, gave Alpha = 49 us and a 40% misfit). Refit on the
// machine a job runs on for absolute predictions; the choices depend only
// on the ratios. Both directions of a loopback link are copies made by the
// same CPUs: Duplex is 1.
var tcpLoopback = Cost{Alpha: 50.5e-6, Beta: 1.003e-9, Duplex: 1}

// handshakeDeadline bounds one handshake: 30 s, or less if ctx says so.
func handshakeDeadline(ctx context.Context) time.Time {
	d := time.Now().Add(30 * time.Second)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	return d
}
