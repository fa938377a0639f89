package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Authenticated streams between a client and a server over any Network:
// an AuthListener admits the dialers that prove the job token, DialAuth
// dials and proves it. The Mesh makes its rank-to-rank streams with them;
// a service whose clients are not ranks of a job (a federated server) uses
// them directly. Either way, nothing but the handshake has read or written
// a stream they hand out.

// AuthOptions tunes an AuthListener. Zero fields take their defaults.
type AuthOptions struct {
	// Check, if set, judges a dialer once it has proven it holds the
	// token, by what it said about itself and by its stream (on a TLS
	// network, PeerFingerprint(s) names its certificate). An error refuses
	// the dialer, which is told the error's text.
	Check func(s Stream, h Hello) error
	// Timeout bounds one dialer's handshakes, TLS and job token together.
	// Default 30 s.
	Timeout time.Duration
	// Log receives the refusals. Default slog.Default().
	Log *slog.Logger
}

// AuthListener accepts the streams of a Listener and hands out those whose
// dialer passes the server side of the job-token handshake (see
// ServerHandshake). Each dialer is handshaken on a goroutine of its own,
// so a stranger that says nothing holds up only itself until Timeout;
// dialers refused (a stranger, a wrong token, another job, a certificate
// allow or Check refuses) are logged and closed, and never reach Accept.
type AuthListener struct {
	ln    Listener
	self  Identity
	check func(Stream, Hello) error
	wait  time.Duration
	log   *slog.Logger

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	ready  chan admitted  // admitted streams, for Accept
	done   chan struct{}  // closed when the accept loop has ended
	err    error          // why it ended; set before done is closed
	wg     sync.WaitGroup // the accept loop and the handshakes
	closed sync.Once
}

type admitted struct {
	s Stream
	h Hello
}

// NewAuthListener starts admitting the dialers of ln that prove self.Token
// and name self.Job and self.Purpose; the server side's Hello says
// self.Rank, self.Size and self.Channel. The AuthListener owns ln from now
// on: Close closes it.
func NewAuthListener(ln Listener, self Identity, opts AuthOptions) *AuthListener {
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	l := &AuthListener{
		ln: ln, self: self, check: opts.Check, wait: opts.Timeout, log: opts.Log,
		ready: make(chan admitted), done: make(chan struct{}),
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// Endpoint is what dialers need to reach the listener: its address and,
// on a TLS network, its certificate's fingerprint.
func (l *AuthListener) Endpoint() Endpoint { return l.ln.Endpoint() }

// Accept returns the next admitted stream and what its dialer said about
// itself. It fails with an error wrapping ErrClosed once the listener is
// closed, with ctx's cause when ctx ends first, and with the Listener's
// error if it stopped accepting on its own; none of these concern a single
// dialer, so the caller need not accept again.
func (l *AuthListener) Accept(ctx context.Context) (Stream, Hello, error) {
	select {
	case a := <-l.ready:
		return a.s, a.h, nil
	case <-l.done:
		return nil, Hello{}, l.err
	case <-ctx.Done():
		return nil, Hello{}, context.Cause(ctx)
	}
}

// Close stops accepting, interrupts the handshakes in progress and waits
// for them; streams Accept returned stay up.
func (l *AuthListener) Close() error {
	var err error
	l.closed.Do(func() {
		l.cancel()
		err = l.ln.Close()
		l.wg.Wait()
	})
	return err
}

func (l *AuthListener) acceptLoop() {
	defer l.wg.Done()
	defer close(l.done)
	for {
		s, err := l.ln.Accept(l.ctx)
		switch {
		case l.ctx.Err() != nil:
			if s != nil {
				_ = s.Close()
			}
			l.err = fmt.Errorf("transport: accepting %v connections: %w", l.self.Purpose, ErrClosed)
			return
		case errors.Is(err, ErrAuth) || errors.Is(err, ErrProtocol):
			l.refused("", err) // one dialer, refused by the network (its certificate)
			continue
		case err != nil:
			l.err = fmt.Errorf("transport: no longer accepting %v connections: %w", l.self.Purpose, err)
			return
		}
		l.wg.Add(1)
		go l.admit(s)
	}
}

// admit handshakes one dialer and hands its stream to Accept, or refuses
// it.
func (l *AuthListener) admit(s Stream) {
	defer l.wg.Done()
	// Close interrupts the handshake: its reads and writes fail at once.
	interrupt := context.AfterFunc(l.ctx, func() { _ = s.SetDeadline(time.Now()) })
	var check func(Hello) error
	if l.check != nil {
		check = func(h Hello) error { return l.check(s, h) }
	}
	h, err := ServerHandshake(s, l.self, time.Now().Add(l.wait), check)
	if !interrupt() { // closing: whatever the handshake said, the stream is done
		_ = s.Close()
		return
	}
	if err != nil {
		l.refused(remoteAddr(s), err)
		_ = s.Close()
		return
	}
	select {
	case l.ready <- admitted{s, h}:
	case <-l.ctx.Done():
		_ = s.Close()
	}
}

func (l *AuthListener) refused(from string, err error) {
	if l.ctx.Err() != nil {
		return // the refusal is Close's doing
	}
	args := []any{"purpose", l.self.Purpose, "err", err}
	if from != "" {
		args = append(args, "from", from)
	}
	l.log.Warn("ringo: refused a connection", args...)
}

// DialAuth dials to over nw and runs the client side of the job-token
// handshake as self (see ClientHandshake), within ctx and at most 30 s.
// It returns the stream, ready for frames, and what the listener said
// about itself; the caller checks that it is the peer it meant (a rank, a
// channel). On failure the stream is closed; an error from a listener that
// refused the token or the job, or whose certificate is not to's
// Fingerprint, wraps ErrAuth or ErrProtocol, and dialing again will fail
// the same way.
func DialAuth(ctx context.Context, nw Network, to Endpoint, self Identity) (Stream, Hello, error) {
	s, err := nw.Dial(ctx, to)
	if err != nil {
		return nil, Hello{}, fmt.Errorf("transport: dialing %s: %w", to.Addr, err)
	}
	interrupt := context.AfterFunc(ctx, func() { _ = s.SetDeadline(time.Now()) })
	h, err := ClientHandshake(s, self, handshakeDeadline(ctx))
	if !interrupt() {
		// ctx ended during the handshake and cut it short, or left the
		// stream with a past deadline: either way ctx is why.
		err = context.Cause(ctx)
	}
	if err != nil {
		_ = s.Close()
		return nil, Hello{}, fmt.Errorf("transport: handshake with %s: %w", to.Addr, err)
	}
	return s, h, nil
}
