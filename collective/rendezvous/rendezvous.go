// Package rendezvous lets the ranks of a job find each other: one server (rank
// 0, or a launcher) collects every rank's advertised address and, once all
// have registered, sends each rank the full table. Every connection to it is
// authenticated with the job token like any peer connection.
package rendezvous

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/transport"
)

// maxMessage bounds a rendezvous message (a registration or the table).
const maxMessage = 1 << 20

// handshakeTimeout bounds one connection's handshake, so a stranger that
// connects and says nothing cannot hold the server.
const handshakeTimeout = 10 * time.Second

type registration struct {
	Rank        int    `json:"rank"`
	Addr        string `json:"addr"`
	Fingerprint string `json:"fp,omitempty"`
	MAC         []byte `json:"mac,omitempty"`
}

type reply struct {
	Addrs        []string `json:"addrs,omitempty"`
	Fingerprints []string `json:"fps,omitempty"`
	MACs         [][]byte `json:"macs,omitempty"`
	Error        string   `json:"error,omitempty"`
}

// Entry is what one rank publishes: the address it accepts peers on and,
// for TLS transports, the fingerprint of its certificate.
type Entry struct {
	Addr        string
	Fingerprint string
}

// entryMAC binds a rank's entry to the job token, so that the table a rank
// receives cannot be altered on the way (the bytes after the handshake are
// not otherwise protected): a rank trusts a fingerprint only with a valid MAC.
func entryMAC(id transport.Identity, rank int, e Entry) []byte {
	m := hmac.New(sha256.New, id.Token)
	fmt.Fprintf(m, "ringo rendezvous entry\x00%s\x00%d\x00%s\x00%s", id.Job, rank, e.Addr, e.Fingerprint)
	return m.Sum(nil)
}

// ServeOptions are the optional parts of ServeWith.
type ServeOptions struct {
	// Log receives refused connections (Warn) and registrations (Debug);
	// nil means slog.Default().
	Log *slog.Logger
	// OnRegister, if not nil, is called once for every rank the server
	// accepts, with the address that rank advertised, so that a launcher can
	// show progress. Calls are never concurrent, and all have returned when
	// Serve returns. A call holds up the other registrations: it must not
	// block.
	OnRegister func(rank int, addr string)
}

// Serve is ServeWith with only a logger.
func Serve(ctx context.Context, ln net.Listener, id transport.Identity, log *slog.Logger) error {
	return ServeWith(ctx, ln, id, ServeOptions{Log: log})
}

// ServeWith accepts the ranks of one job on ln until all id.Size ranks have
// registered, sends each of them the table of addresses, and returns. It
// refuses (and logs) connections without the token, from other jobs, for an
// out-of-range or already registered rank, and strangers that do not speak
// the protocol; none of them stops the others. It returns early with ctx's
// error. ln is not closed, and may serve again.
func ServeWith(ctx context.Context, ln net.Listener, id transport.Identity, opts ServeOptions) error {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	id.Rank, id.Purpose = -1, transport.PurposeRendezvous
	var (
		mu      sync.Mutex
		conns   = make(map[int]net.Conn)      // registered ranks
		open    = make(map[net.Conn]struct{}) // every accepted connection
		addrs   = make([]string, id.Size)
		fps     = make([]string, id.Size)
		macs    = make([][]byte, id.Size)
		full    = make(chan struct{})
		wg      sync.WaitGroup
		stopped = make(chan struct{})
	)
	// A deadline left on ln (by an earlier Serve) would end this one at once.
	setDeadline(ln, time.Time{})
	// Accept returns only on a connection or an error: a deadline in the
	// past is how the end (all registered, or ctx done) reaches it.
	watcherDone := make(chan struct{})
	go func() {
		defer close(watcherDone)
		select {
		case <-full:
		case <-ctx.Done():
		case <-stopped:
			return
		}
		setDeadline(ln, time.Now())
	}()
	defer func() {
		close(stopped)
		<-watcherDone
		setDeadline(ln, time.Time{}) // ln can serve again
		mu.Lock()
		for c := range open {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			select {
			case <-full:
				return broadcast(conns, reply{Addrs: addrs, Fingerprints: fps, MACs: macs})
			default:
			}
			if ctx.Err() != nil {
				return fmt.Errorf("rendezvous: %w", context.Cause(ctx))
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// A deadline set after all registered but before Accept noticed.
				continue
			}
			return fmt.Errorf("rendezvous: accept: %w", err)
		}
		mu.Lock()
		open[conn] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			rank, err := register(conn, id, func(rank int, reg registration) error {
				mu.Lock()
				defer mu.Unlock()
				if _, dup := conns[rank]; dup {
					return fmt.Errorf("rank %d is already registered", rank)
				}
				conns[rank] = conn
				addrs[rank], fps[rank], macs[rank] = reg.Addr, reg.Fingerprint, reg.MAC
				if opts.OnRegister != nil {
					opts.OnRegister(rank, reg.Addr)
				}
				if len(conns) == id.Size {
					close(full)
				}
				return nil
			})
			if err != nil {
				log.Warn("ringo rendezvous: refused a connection", "from", conn.RemoteAddr().String(), "err", err)
				_ = conn.Close()
				return
			}
			log.Debug("ringo rendezvous: rank registered", "rank", rank, "from", conn.RemoteAddr().String())
		}()
	}
}

func setDeadline(ln net.Listener, t time.Time) {
	if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
		_ = d.SetDeadline(t)
	}
}

func register(conn net.Conn, id transport.Identity, add func(rank int, reg registration) error) (int, error) {
	deadline := time.Now().Add(handshakeTimeout)
	_, err := transport.ServerHandshake(conn, id, deadline, func(h transport.Hello) error {
		if h.Size != id.Size {
			return fmt.Errorf("rank %d says the world size is %d, the rendezvous expects %d", h.Rank, h.Size, id.Size)
		}
		if h.Rank < 0 || h.Rank >= id.Size {
			return fmt.Errorf("rank %d is out of range for world size %d", h.Rank, id.Size)
		}
		return nil
	})
	if err != nil {
		return -1, err
	}
	_ = conn.SetDeadline(deadline)
	var reg registration
	if err := readMessage(conn, &reg); err != nil {
		return -1, err
	}
	_ = conn.SetDeadline(time.Time{})
	if reg.Rank < 0 || reg.Rank >= id.Size {
		return -1, fmt.Errorf("registration for rank %d out of range", reg.Rank)
	}
	if err := add(reg.Rank, reg); err != nil {
		_ = writeMessage(conn, reply{Error: err.Error()})
		return -1, err
	}
	return reg.Rank, nil
}

func broadcast(conns map[int]net.Conn, table reply) error {
	var first error
	for rank, c := range conns {
		_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
		if err := writeMessage(c, table); err != nil && first == nil {
			first = fmt.Errorf("rendezvous: sending the table to rank %d: %w", rank, err)
		}
	}
	return first
}

// Join registers this rank (id.Rank) with the rendezvous at addr and returns
// the address of every rank. advertise is called with the local address of
// the connection to the rendezvous and returns the address this rank
// publishes. Join retries while the server is not up yet, until ctx is done;
// a failed authentication is final.
func Join(ctx context.Context, addr string, id transport.Identity, advertise func(local net.Addr) (string, error)) ([]string, error) {
	entries, err := JoinWith(ctx, addr, id, func(local net.Addr) (Entry, error) {
		a, err := advertise(local)
		return Entry{Addr: a}, err
	})
	if err != nil {
		return nil, err
	}
	addrs := make([]string, len(entries))
	for i, e := range entries {
		addrs[i] = e.Addr
	}
	return addrs, nil
}

// JoinWith is Join for ranks that also publish a certificate fingerprint:
// advertise returns this rank's Entry, and JoinWith returns every rank's.
// A fingerprint in the table comes with a MAC made with the job token by the
// rank that registered it; JoinWith refuses a table whose MACs do not check.
func JoinWith(ctx context.Context, addr string, id transport.Identity, advertise func(local net.Addr) (Entry, error)) ([]Entry, error) {
	id.Purpose = transport.PurposeRendezvous
	backoff := 20 * time.Millisecond
	for {
		entries, err := joinOnce(ctx, addr, id, advertise)
		if err == nil {
			return entries, nil
		}
		var final *finalError
		if errors.As(err, &final) || errors.Is(err, transport.ErrAuth) || errors.Is(err, transport.ErrProtocol) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("rendezvous at %s: %w (last attempt: %w)", addr, context.Cause(ctx), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// finalError is a refusal that retrying cannot fix.
type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }

func joinOnce(ctx context.Context, addr string, id transport.Identity, advertise func(net.Addr) (Entry, error)) ([]Entry, error) {
	conn, err := transport.DialTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	deadline := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if _, err := transport.ClientHandshake(conn, id, deadline); err != nil {
		return nil, fmt.Errorf("rendezvous at %s: %w", addr, err)
	}
	self, err := advertise(conn.LocalAddr())
	if err != nil {
		return nil, &finalError{err}
	}
	reg := registration{Rank: id.Rank, Addr: self.Addr, Fingerprint: self.Fingerprint}
	if self.Fingerprint != "" {
		reg.MAC = entryMAC(id, id.Rank, self)
	}
	if err := writeMessage(conn, reg); err != nil {
		return nil, err
	}
	var r reply
	// The table comes when the last rank registers: wait for it as long as ctx allows.
	if err := readMessage(conn, &r); err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, fmt.Errorf("rendezvous at %s: waiting for the other ranks: %w", addr, err)
	}
	if r.Error != "" {
		return nil, &finalError{fmt.Errorf("rendezvous at %s refused rank %d: %s", addr, id.Rank, r.Error)}
	}
	if len(r.Addrs) != id.Size {
		return nil, &finalError{fmt.Errorf("rendezvous at %s sent %d addresses for %d ranks", addr, len(r.Addrs), id.Size)}
	}
	entries := make([]Entry, id.Size)
	for rank, a := range r.Addrs {
		entries[rank].Addr = a
		if rank >= len(r.Fingerprints) || r.Fingerprints[rank] == "" {
			continue
		}
		entries[rank].Fingerprint = r.Fingerprints[rank]
		if rank >= len(r.MACs) || !hmac.Equal(r.MACs[rank], entryMAC(id, rank, entries[rank])) {
			return nil, &finalError{fmt.Errorf("%w: rendezvous at %s sent a certificate fingerprint for rank %d that rank did not register", transport.ErrAuth, addr, rank)}
		}
	}
	return entries, nil
}

func writeMessage(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	msg := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	_, err = w.Write(append(msg, b...))
	return err
}

func readMessage(r io.Reader, v any) error {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxMessage {
		return fmt.Errorf("%w: rendezvous message of %d bytes", transport.ErrProtocol, size)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: rendezvous message: %w", transport.ErrProtocol, err)
	}
	return nil
}

// Server is a rendezvous served in the background: rank 0's, or one a test
// or a launcher runs beside its ranks.
type Server struct {
	ln     net.Listener
	cancel context.CancelFunc
	done   chan struct{} // closed when ServeWith has returned
	err    error         // ServeWith's, once done is closed
}

// ListenAndServe listens on addr (host:port; port 0 picks one) and serves
// the rendezvous of one job there, as ServeWith does, until every rank has
// registered, ctx ends or Close is called.
func ListenAndServe(ctx context.Context, addr string, id transport.Identity, opts ServeOptions) (*Server, error) {
	ln, err := transport.ListenTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &Server{ln: ln, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.err = ServeWith(ctx, ln, id, opts)
	}()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Wait waits until the server has stopped serving (every rank registered,
// or ctx ended, or Close) and returns ServeWith's error.
func (s *Server) Wait() error {
	<-s.done
	return s.err
}

// Close stops serving, waits for the server to stop and closes its
// listener. It returns nil.
func (s *Server) Close() error {
	s.cancel()
	<-s.done
	_ = s.ln.Close()
	return nil
}
