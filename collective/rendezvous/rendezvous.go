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
	"strconv"
	"strings"
	"sync"
	"syscall"
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
	Host        string `json:"host,omitempty"`
	Local       string `json:"local,omitempty"`
	MAC         []byte `json:"mac,omitempty"`
	// Progress asks for progress messages while ranks are missing (a
	// server that predates them ignores the field, and sends none).
	Progress bool `json:"progress,omitempty"`
}

// reply is what the server sends a registered rank: progress messages
// (Waiting) while ranks are missing, then the table or an error.
type reply struct {
	Addrs        []string `json:"addrs,omitempty"`
	Fingerprints []string `json:"fps,omitempty"`
	Hosts        []string `json:"hosts,omitempty"`
	Locals       []string `json:"locals,omitempty"`
	MACs         [][]byte `json:"macs,omitempty"`
	Error        string   `json:"error,omitempty"`
	Ended        bool     `json:"ended,omitempty"` // the server gave up: Error says why
	Class        string   `json:"class,omitempty"` // of the server's reason: "timeout", "deadline", "canceled"
	Waiting      bool     `json:"waiting,omitempty"`
	Missing      []int    `json:"missing,omitempty"`
	Joined       int      `json:"joined,omitempty"`
}

// Entry is what one rank publishes: the address it accepts peers on and,
// for TLS transports, the fingerprint of its certificate; which host it
// runs on and, for shared memory with the ranks of that host, where it
// accepts their control connections.
type Entry struct {
	Addr        string
	Fingerprint string
	// Host names the memory the rank can share: ranks with the same Host
	// are on one host ("" if the rank did not say).
	Host string
	// Local is the address of the rank's listener for the ranks of its
	// host ("" if it has none).
	Local string
}

// entryMAC binds a rank's entry to the job token, so that the table a rank
// receives cannot be altered on the way (the bytes after the handshake are
// not otherwise protected): a rank trusts a fingerprint only with a valid MAC.
func entryMAC(id transport.Identity, rank int, e Entry) []byte {
	m := hmac.New(sha256.New, id.Token)
	fmt.Fprintf(m, "ringo rendezvous entry\x00%s\x00%d\x00%s\x00%s\x00%s\x00%s", id.Job, rank, e.Addr, e.Fingerprint, e.Host, e.Local)
	return m.Sum(nil)
}

// DefaultProgress is how often, by default, a rendezvous server reports
// which ranks are still missing (ServeOptions.Progress).
const DefaultProgress = 5 * time.Second

// progressWriteTimeout bounds one progress message to one rank, so that a
// rank that stopped reading cannot hold the server.
const progressWriteTimeout = time.Second

// ServeOptions are the optional parts of ServeWith.
type ServeOptions struct {
	// Log receives refused connections (Warn), which ranks have joined and
	// which are missing (Info, every Progress) and registrations (Debug);
	// nil means slog.Default().
	Log *slog.Logger
	// Progress is how often, while ranks are missing, the server logs which
	// have joined and which not, and tells the registered ranks, so that
	// each of them can name the missing ranks if it gives up. Zero means
	// DefaultProgress, negative never.
	Progress time.Duration
	// PortInUse, if not nil, makes ListenAndServe wait for a port in use
	// (by another job given the same address, say) until its context ends,
	// rather than fail: the second job forms once the first has. It is
	// called once, when the port is first found in use. ServeWith, given
	// its listener, does not use it.
	PortInUse func()
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
// the protocol; none of them stops the others. While ranks are missing it
// reports which, every opts.Progress. It returns early with ctx's error,
// naming the ranks that had not joined, and tells the registered ranks so.
// ln is not closed, and may serve again.
func ServeWith(ctx context.Context, ln net.Listener, id transport.Identity, opts ServeOptions) error {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	every := opts.Progress
	if every == 0 {
		every = DefaultProgress
	}
	id.Rank, id.Purpose = -1, transport.PurposeRendezvous
	s := &serverState{
		id:    id,
		log:   log,
		every: every,
		conns: make(map[int]net.Conn),
		open:  make(map[net.Conn]struct{}),
		prog:  make(map[int]bool),
		addrs: make([]string, id.Size),
		fps:   make([]string, id.Size),
		hosts: make([]string, id.Size),
		local: make([]string, id.Size),
		macs:  make([][]byte, id.Size),
		full:  make(chan struct{}),
	}
	var (
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
		var tick <-chan time.Time
		if every > 0 {
			t := time.NewTicker(every)
			defer t.Stop()
			tick = t.C
		}
		for {
			select {
			case <-s.full:
			case <-ctx.Done():
			case <-stopped:
				return
			case <-tick:
				s.progress()
				continue
			}
			setDeadline(ln, time.Now())
			return
		}
	}()
	defer func() {
		close(stopped)
		<-watcherDone
		setDeadline(ln, time.Time{}) // ln can serve again
		s.mu.Lock()
		for c := range s.open {
			_ = c.Close()
		}
		s.mu.Unlock()
		wg.Wait()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			select {
			case <-s.full:
				return broadcast(s.conns, reply{Addrs: s.addrs, Fingerprints: s.fps, Hosts: s.hosts, Locals: s.local, MACs: s.macs})
			default:
			}
			if ctx.Err() != nil {
				return s.giveUp(context.Cause(ctx))
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// A deadline set after all registered but before Accept noticed.
				continue
			}
			return fmt.Errorf("rendezvous: accept: %w", err)
		}
		s.mu.Lock()
		s.open[conn] = struct{}{}
		s.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.admit(conn, opts.OnRegister)
		}()
	}
}

// serverState is what ServeWith knows of one job while it forms.
type serverState struct {
	id    transport.Identity
	log   *slog.Logger
	every time.Duration

	mu    sync.Mutex
	conns map[int]net.Conn      // registered ranks
	open  map[net.Conn]struct{} // every accepted connection
	prog  map[int]bool          // registered ranks that take progress messages
	addrs []string
	fps   []string
	hosts []string
	local []string
	macs  [][]byte
	full  chan struct{} // closed when every rank has registered
	// lastOtherJob is when a rank of another job was last reported: such a
	// rank retries, and one line per interval is enough.
	lastOtherJob time.Time
}

// admit runs the handshake and registration of one connection, and reports
// a refusal in words that say what probably went wrong.
func (s *serverState) admit(conn net.Conn, onRegister func(int, string)) {
	from := conn.RemoteAddr().String()
	rank, hello, err := register(conn, s.id, func(rank int, reg registration) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, dup := s.conns[rank]; dup {
			return fmt.Errorf("rank %d is already registered: is another job using this port? (give each job its own RINGO_JOB_ID)", rank)
		}
		s.conns[rank] = conn
		s.addrs[rank], s.fps[rank], s.macs[rank] = reg.Addr, reg.Fingerprint, reg.MAC
		s.hosts[rank], s.local[rank] = reg.Host, reg.Local
		if onRegister != nil {
			onRegister(rank, reg.Addr)
		}
		if len(s.conns) == s.id.Size {
			close(s.full)
			return nil
		}
		if reg.Progress {
			s.prog[rank] = true
			s.tellLocked(conn, s.waitingLocked())
		}
		return nil
	})
	if err == nil {
		s.log.Debug("ringo rendezvous: rank registered", "rank", rank, "from", from)
		return
	}
	_ = conn.Close()
	host := from
	if h, _, herr := net.SplitHostPort(from); herr == nil {
		host = h
	}
	switch {
	case errors.Is(err, transport.ErrAuth):
		s.mu.Lock()
		missing := s.missingLocked()
		s.mu.Unlock()
		s.log.Warn(fmt.Sprintf("ringo rendezvous: a connection from %s (claiming rank %d) failed the token check while %s: is RINGO_TOKEN the same on every rank?",
			host, hello.Rank, missingPhrase(missing)))
	case errors.Is(err, transport.ErrOtherJob):
		s.mu.Lock()
		report := time.Since(s.lastOtherJob) >= max(s.every, time.Second)
		if report {
			s.lastOtherJob = time.Now()
		}
		s.mu.Unlock()
		if report {
			s.log.Warn(fmt.Sprintf("ringo rendezvous: a rank of another job (rank %d of %d, from %s) tried to join job %q; is another job using this port?",
				hello.Rank, hello.Size, host, s.id.Job))
		}
	default:
		s.log.Warn("ringo rendezvous: refused a connection", "from", from, "err", err)
	}
}

// missingLocked lists the ranks that have not registered.
func (s *serverState) missingLocked() []int {
	var missing []int
	for r := range s.id.Size {
		if _, ok := s.conns[r]; !ok {
			missing = append(missing, r)
		}
	}
	return missing
}

func (s *serverState) waitingLocked() reply {
	return reply{Waiting: true, Missing: s.missingLocked(), Joined: len(s.conns)}
}

// tellLocked sends msg to one registered rank, bounded in time; a rank that
// does not take it is found out when the table goes out.
func (s *serverState) tellLocked(conn net.Conn, msg reply) {
	_ = conn.SetWriteDeadline(time.Now().Add(progressWriteTimeout))
	_ = writeMessage(conn, msg)
	_ = conn.SetWriteDeadline(time.Time{})
}

// progress logs which ranks have joined and which are missing, and tells
// the ranks that wait.
func (s *serverState) progress() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) == s.id.Size {
		return // the table is on its way: nothing may be sent after it
	}
	msg := s.waitingLocked()
	var joined []int
	for r := range s.id.Size {
		if _, ok := s.conns[r]; ok {
			joined = append(joined, r)
		}
	}
	s.log.Info(fmt.Sprintf("ringo rendezvous: %d of %d ranks joined (%s); waiting for %s",
		len(joined), s.id.Size, formatRanks(joined), ranksNoun(msg.Missing)))
	for rank, conn := range s.conns {
		if s.prog[rank] {
			s.tellLocked(conn, msg)
		}
	}
}

// endClasses are the classes of a server's reason to give up that travel
// to the ranks, so that their errors match the same sentinel.
var endClasses = map[string]error{
	"timeout":  transport.ErrTimeout,
	"deadline": context.DeadlineExceeded,
	"canceled": context.Canceled,
}

// serverEnded is the error of a rank whose rendezvous server gave up: the
// server's reason, matching the sentinel of its class.
type serverEnded struct {
	text  string
	class error
}

func (e *serverEnded) Error() string { return e.text }
func (e *serverEnded) Unwrap() error { return e.class }

// giveUp ends a rendezvous that ctx cut short: the registered ranks are
// told who was missing, and so is the caller.
func (s *serverState) giveUp(cause error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	why := waitingPhrase(s.missingLocked(), len(s.conns), s.id.Size)
	msg := reply{Ended: true, Error: fmt.Sprintf("%v: %s", cause, why)}
	for class, err := range endClasses {
		if errors.Is(cause, err) {
			msg.Class = class
		}
	}
	for _, conn := range s.conns {
		s.tellLocked(conn, msg)
	}
	return fmt.Errorf("rendezvous: %w: %s", cause, why)
}

func setDeadline(ln net.Listener, t time.Time) {
	if d, ok := ln.(interface{ SetDeadline(time.Time) error }); ok {
		_ = d.SetDeadline(t)
	}
}

// register runs one connection's handshake and registration; it returns
// the rank registered, and what the other side said in its hello (also on
// failure, if it got that far).
func register(conn net.Conn, id transport.Identity, add func(rank int, reg registration) error) (int, transport.Hello, error) {
	deadline := time.Now().Add(handshakeTimeout)
	hello, err := transport.ServerHandshake(conn, id, deadline, func(h transport.Hello) error {
		if h.Size != id.Size {
			return fmt.Errorf("rank %d says the world size is %d, the rendezvous expects %d", h.Rank, h.Size, id.Size)
		}
		if h.Rank < 0 || h.Rank >= id.Size {
			return fmt.Errorf("rank %d is out of range for world size %d", h.Rank, id.Size)
		}
		return nil
	})
	if err != nil {
		return -1, hello, err
	}
	_ = conn.SetDeadline(deadline)
	var reg registration
	if err := readMessage(conn, &reg); err != nil {
		return -1, hello, err
	}
	_ = conn.SetDeadline(time.Time{})
	if reg.Rank < 0 || reg.Rank >= id.Size {
		return -1, hello, fmt.Errorf("registration for rank %d out of range", reg.Rank)
	}
	if err := add(reg.Rank, reg); err != nil {
		_ = writeMessage(conn, reply{Error: err.Error()})
		return -1, hello, err
	}
	return reg.Rank, hello, nil
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
//
// A server of another job at addr (two jobs given one address) is retried
// like a server that is not up yet: the other job's rendezvous ends once it
// has formed, and this job's may then take the port. If ctx ends first, the
// error says so, or names the ranks the server was still waiting for.
func JoinWith(ctx context.Context, addr string, id transport.Identity, advertise func(local net.Addr) (Entry, error)) ([]Entry, error) {
	id.Purpose = transport.PurposeRendezvous
	backoff := 20 * time.Millisecond
	var heard progress
	for {
		entries, err := joinOnce(ctx, addr, id, advertise, &heard)
		if err == nil {
			return entries, nil
		}
		var final *finalError
		if errors.As(err, &final) || errors.Is(err, transport.ErrAuth) ||
			errors.Is(err, transport.ErrProtocol) && !errors.Is(err, transport.ErrOtherJob) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			if heard.valid {
				return nil, fmt.Errorf("the rendezvous server at %s: %w: %s",
					addr, context.Cause(ctx), waitingPhrase(heard.missing, heard.joined, id.Size))
			}
			return nil, fmt.Errorf("the rendezvous server at %s: %w (last attempt: %w)", addr, context.Cause(ctx), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// progress is the last progress message a joining rank received.
type progress struct {
	valid   bool
	missing []int
	joined  int
}

// finalError is a refusal that retrying cannot fix.
type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }

func joinOnce(ctx context.Context, addr string, id transport.Identity, advertise func(net.Addr) (Entry, error), heard *progress) ([]Entry, error) {
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
		if errors.Is(err, transport.ErrOtherJob) {
			return nil, fmt.Errorf("%w: the rendezvous server at %s serves another job than this rank's (job id %q): is another job using this port?",
				transport.ErrOtherJob, addr, id.Job)
		}
		return nil, fmt.Errorf("rendezvous at %s: %w", addr, err)
	}
	self, err := advertise(conn.LocalAddr())
	if err != nil {
		return nil, &finalError{err}
	}
	reg := registration{Rank: id.Rank, Addr: self.Addr, Fingerprint: self.Fingerprint, Host: self.Host, Local: self.Local, Progress: true}
	if self.Fingerprint != "" {
		reg.MAC = entryMAC(id, id.Rank, self)
	}
	if err := writeMessage(conn, reg); err != nil {
		return nil, err
	}
	// The table comes when the last rank registers: wait for it as long as
	// ctx allows, keeping the news of who is missing.
	var r reply
	for {
		r = reply{}
		if err := readMessage(conn, &r); err != nil {
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			return nil, fmt.Errorf("rendezvous at %s: waiting for the other ranks: %w", addr, err)
		}
		if !r.Waiting {
			break
		}
		*heard = progress{valid: true, missing: r.Missing, joined: r.Joined}
	}
	if r.Ended {
		return nil, &finalError{fmt.Errorf("the rendezvous server at %s gave up: %w", addr, &serverEnded{r.Error, endClasses[r.Class]})}
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
		if rank < len(r.Hosts) {
			entries[rank].Host = r.Hosts[rank]
		}
		if rank < len(r.Locals) {
			entries[rank].Local = r.Locals[rank]
		}
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

// maxRanges bounds how many ranges of ranks a message lists.
const maxRanges = 16

// formatRanks writes sorted ranks as ranges, "0-3,5,7-9", at most maxRanges
// of them; "none" for no rank.
func formatRanks(ranks []int) string {
	if len(ranks) == 0 {
		return "none"
	}
	var b strings.Builder
	ranges := 0
	for i := 0; i < len(ranks); {
		j := i
		for j+1 < len(ranks) && ranks[j+1] == ranks[j]+1 {
			j++
		}
		if ranges == maxRanges {
			fmt.Fprintf(&b, ",… (%d more)", len(ranks)-i)
			break
		}
		if ranges > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(ranks[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(ranks[j]))
		}
		ranges++
		i = j + 1
	}
	return b.String()
}

// ranksNoun is "rank 2" or "ranks 2,5-7".
func ranksNoun(ranks []int) string {
	if len(ranks) == 1 {
		return "rank " + strconv.Itoa(ranks[0])
	}
	return "ranks " + formatRanks(ranks)
}

// missingPhrase is "rank 2 is missing" or "ranks 2,5 are missing".
func missingPhrase(missing []int) string {
	switch len(missing) {
	case 0:
		return "no rank is missing"
	case 1:
		return ranksNoun(missing) + " is missing"
	}
	return ranksNoun(missing) + " are missing"
}

// waitingPhrase is "still waiting for rank 2 (3 of 4 ranks had joined)".
func waitingPhrase(missing []int, joined, size int) string {
	return fmt.Sprintf("still waiting for %s (%d of %d ranks had joined)", ranksNoun(missing), joined, size)
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
// registered, ctx ends or Close is called. With opts.PortInUse set, a port
// in use is waited for (see ServeOptions).
func ListenAndServe(ctx context.Context, addr string, id transport.Identity, opts ServeOptions) (*Server, error) {
	ln, err := listen(ctx, addr, opts.PortInUse)
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

// listen listens on addr. A port in use is waited for, until ctx ends, if
// inUse is set (it is called once, when the port is first found in use).
func listen(ctx context.Context, addr string, inUse func()) (net.Listener, error) {
	backoff := 20 * time.Millisecond
	for warned := false; ; warned = true {
		ln, err := transport.ListenTCP(ctx, addr)
		if err == nil || inUse == nil || !errors.Is(err, syscall.EADDRINUSE) {
			return ln, err
		}
		if !warned {
			inUse()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: the port stayed in use: is another job using it? (%w)", context.Cause(ctx), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}
