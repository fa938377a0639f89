package fed

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/transport"
)

// ServerConfig configures a Server. Zero fields take their defaults.
type ServerConfig struct {
	// Addr is where the server listens ("host:port"; port 0 picks one).
	Addr string
	// Transport is how clients connect. Default TCP.
	Transport Transport
	// Certificate is the server's TLS identity with TLS or QUIC; nil makes
	// an ephemeral one. Clients need its Fingerprint: keep the certificate
	// to keep the fingerprint across a restart of the server.
	Certificate *transport.Certificate
	// Token is the job's shared secret: clients prove they hold it.
	Token []byte
	// Job names the federation; clients must name the same.
	Job string

	// Weights are the initial global weights (the model, flattened). The
	// server keeps its own copy.
	Weights []float32
	// Rounds is the number of rounds to run.
	Rounds int
	// Strategy plans the rounds and aggregates them. Default &FedAvg{}.
	Strategy Strategy
	// Secure turns on secure aggregation; nil sends updates in the clear.
	Secure *SecureAggregation
	// RoundTimeout bounds one attempt at a round, from sending the weights
	// to the last update. Default 5 min.
	RoundTimeout time.Duration
	// MaxAttempts bounds the attempts at one round (an attempt fails when
	// too few clients answer); then Run fails. Default 10.
	MaxAttempts int
	// Evaluate, if set, evaluates the global weights before the first
	// round (round 0) and after each; its metrics go in the round's
	// summary. An error from it ends Run.
	Evaluate func(ctx context.Context, round int, weights []float32) (map[string]float64, error)
	// OnRound, if set, is called after each round with its summary.
	OnRound func(RoundSummary)
	// CheckpointPath, if set, is where the server saves its state after
	// every round (package checkpoint), and where NewServer resumes from.
	CheckpointPath string
	// Seed seeds the client sampling. Default 1.
	Seed uint64
	// MaxClients bounds the connected clients; more are refused. Default 10000.
	MaxClients int
	// SendTimeout bounds the write of one message to a client; a client
	// that reads slower is dropped. Default 1 min.
	SendTimeout time.Duration
	// Logger receives the server's notes: refused strangers, dropped
	// clients and why, round results. Default slog.Default().
	Logger *slog.Logger

	// record, if set (tests), wraps every accepted stream once its
	// handshakes are done: it sees every byte of every message the server
	// reads.
	record func(transport.Stream) transport.Stream
	// observe, if set (tests), is given every message a client sends, as
	// soon as it is decoded, late ones included.
	observe func(ClientInfo, message)
}

// RoundSummary says what a round did.
type RoundSummary struct {
	Round    int
	Attempts int                // 1 unless attempts failed
	Clients  []ClientInfo       // whose results are in the new weights
	Failures []Failure          // sampled clients of the last attempt with no result
	Examples int64              // Σ n_i over Clients
	Metrics  map[string]float64 // from Evaluate
	Duration time.Duration
}

// Errors of the server, matched with errors.Is.
var (
	// ErrRoundFailed: a round did not complete within MaxAttempts.
	ErrRoundFailed = errors.New("fed: round failed")
	// ErrClosed: the server was closed.
	ErrClosed = errors.New("fed: server closed")
)

// Server runs federated rounds for the clients that connect to it.
type Server struct {
	cfg    ServerConfig
	secure *SecureAggregation // with defaults; nil in the clear
	log    *slog.Logger
	ln     *transport.AuthListener
	cert   *transport.Certificate
	dims   int

	ctx    context.Context // ends at Close: the accept loop, handshakes, sessions
	cancel context.CancelFunc
	events chan event
	wg     sync.WaitGroup
	nextID atomic.Uint64
	liveMu sync.Mutex
	live   map[uint64]*session // every admitted session, for Close and MaxClients
	over   string              // set when Run has ended training: why

	running atomic.Bool
	// Run's state.
	sessions map[uint64]*session // joined, as Run has seen them
	global   []float32
	round    int
	pcg      *mrand.PCG
	rng      *mrand.Rand
	recent   map[uint64]int // task → round, of this server's recent tasks (for logs)

	mu        sync.Mutex // guards the copies readers get
	weights   []float32
	completed int
	history   []RoundSummary
}

// NewServer validates cfg, resumes from cfg.CheckpointPath if there is a
// checkpoint there, and starts listening: clients may connect from now on,
// though rounds run only in Run.
func NewServer(ctx context.Context, cfg ServerConfig) (*Server, error) {
	if cfg.Transport == "" {
		cfg.Transport = TCP
	}
	if err := cfg.Transport.check(); err != nil {
		return nil, fmt.Errorf("fed: %w", err)
	}
	switch {
	case len(cfg.Weights) == 0:
		return nil, errors.New("fed: the server needs initial weights")
	case cfg.Rounds < 0:
		return nil, fmt.Errorf("fed: %d rounds", cfg.Rounds)
	case len(cfg.Token) == 0:
		return nil, errors.New("fed: the server needs a job token")
	}
	if i := firstNonFinite(cfg.Weights); i >= 0 {
		return nil, fmt.Errorf("fed: initial weight %d is %g", i, cfg.Weights[i])
	}
	// Every message is one frame: the weights (4 bytes each) and a masked
	// update (8 bytes each) must fit.
	if limit := maxWeights(cfg.Secure != nil); len(cfg.Weights) > limit {
		return nil, fmt.Errorf("fed: a model of %d weights does not fit in one message (at most %d, secure aggregation %v)",
			len(cfg.Weights), limit, cfg.Secure != nil)
	}
	if cfg.Strategy == nil {
		cfg.Strategy = &FedAvg{}
	}
	if cfg.RoundTimeout <= 0 {
		cfg.RoundTimeout = 5 * time.Minute
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 10
	}
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = 10000
	}
	if cfg.SendTimeout <= 0 {
		cfg.SendTimeout = time.Minute
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		dims:     len(cfg.Weights),
		events:   make(chan event, 64),
		live:     make(map[uint64]*session),
		sessions: make(map[uint64]*session),
		global:   slices.Clone(cfg.Weights),
		recent:   make(map[uint64]int),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if cfg.Secure != nil {
		sa := cfg.Secure.withDefaults()
		sa.KeyTimeout = min(sa.KeyTimeout, cfg.RoundTimeout)
		if err := sa.params().check(); err != nil {
			return nil, fmt.Errorf("fed: secure aggregation: %w", err)
		}
		s.secure = &sa
	}
	s.pcg = mrand.NewPCG(cfg.Seed, 0x66656461766721) // "fedavg!"
	s.rng = mrand.New(s.pcg)
	if err := s.resume(); err != nil {
		return nil, err
	}
	s.weights, s.completed = slices.Clone(s.global), s.round
	if cfg.Transport.secure() {
		s.cert = cfg.Certificate
		if s.cert == nil {
			var err error
			if s.cert, err = transport.NewCertificate(); err != nil {
				return nil, fmt.Errorf("fed: %w", err)
			}
		}
	}
	ln, err := listen(ctx, cfg.Transport, cfg.Addr, s.cert, cfg.Token, cfg.Job, s.log)
	if err != nil {
		return nil, fmt.Errorf("fed: listen on %s: %w", cfg.Addr, err)
	}
	s.ln = ln
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Addr is the address clients dial.
func (s *Server) Addr() string { return s.ln.Endpoint().Addr }

// Fingerprint is the fingerprint of the server's certificate, which
// clients check (ClientConfig.ServerFingerprint); "" over plain TCP.
func (s *Server) Fingerprint() string {
	if s.cert == nil {
		return ""
	}
	return s.cert.Fingerprint()
}

// Round is the last round completed (0 before the first; the checkpoint's
// round for a server that resumed).
func (s *Server) Round() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.completed
}

// Weights returns a copy of the current global weights.
func (s *Server) Weights() []float32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.weights)
}

// History returns the summaries of the rounds this server ran: with
// Evaluate, round 0 (the initial weights' metrics) first, unless the
// server resumed from a checkpoint, whose history starts at the round it
// resumed with.
func (s *Server) History() []RoundSummary {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.history)
}

// Close stops listening, disconnects every client and waits for the
// server's goroutines. Run, if running, returns ErrClosed.
func (s *Server) Close() error {
	s.cancel()
	err := s.ln.Close()
	s.liveMu.Lock()
	for _, ss := range s.live {
		ss.close()
	}
	s.liveMu.Unlock()
	s.wg.Wait()
	return err
}

// Checkpoints.

const (
	checkpointWeights = "fed.weights"
	metaDims          = "fed.dims"
)

// resume loads the checkpoint at CheckpointPath, if there is one.
func (s *Server) resume() error {
	if s.cfg.CheckpointPath == "" {
		return nil
	}
	ck, err := checkpoint.Load(s.cfg.CheckpointPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("fed: resuming from %s: %w", s.cfg.CheckpointPath, err)
	}
	if got := ck.Meta[metaDims]; got != strconv.Itoa(s.dims) {
		return fmt.Errorf("fed: resuming from %s: the checkpoint holds a model of %s weights, this server has %d", s.cfg.CheckpointPath, got, s.dims)
	}
	if err := ck.CopyTo(checkpointWeights, s.global); err != nil {
		return fmt.Errorf("fed: resuming from %s: %w", s.cfg.CheckpointPath, err)
	}
	if err := s.pcg.UnmarshalBinary(ck.RNG); err != nil {
		return fmt.Errorf("fed: resuming from %s: sampling state: %w", s.cfg.CheckpointPath, err)
	}
	if ck.Step < 0 || ck.Step > int64(s.cfg.Rounds) {
		return fmt.Errorf("fed: resuming from %s: round %d of a run of %d", s.cfg.CheckpointPath, ck.Step, s.cfg.Rounds)
	}
	s.round = int(ck.Step)
	s.log.Info("fed: resumed from a checkpoint", "path", s.cfg.CheckpointPath, "round", s.round)
	return nil
}

func (s *Server) save() error {
	if s.cfg.CheckpointPath == "" {
		return nil
	}
	rng, err := s.pcg.MarshalBinary()
	if err != nil {
		return err
	}
	ck := &checkpoint.Checkpoint{
		Step: int64(s.round),
		RNG:  rng,
		Meta: map[string]string{metaDims: strconv.Itoa(s.dims)},
	}
	ck.Add(checkpointWeights, s.global)
	if err := checkpoint.Save(s.cfg.CheckpointPath, ck); err != nil {
		return fmt.Errorf("fed: checkpoint after round %d: %w", s.round, err)
	}
	return nil
}

// Sessions: one per connected client.

// session is one admitted client connection. Its reader goroutine turns
// what the client sends into events; its writer goroutine sends what the
// rounds post, so that no client can hold up a round by reading slowly.
type session struct {
	info ClientInfo
	w    *wire
	out  chan outgoing
	done chan struct{}
	once sync.Once
}

type outgoing struct {
	kind    msgKind
	task    uint64
	payload []byte        // shared between sessions: never modified
	sent    chan struct{} // if not nil, closed once the message is written
}

func (ss *session) close() {
	ss.once.Do(func() {
		close(ss.done)
		_ = ss.w.close()
	})
}

// post queues a message for the client; a client whose queue is full is
// too slow and is disconnected. It reports whether the message was queued.
func (ss *session) post(o outgoing) bool {
	select {
	case <-ss.done:
		return false
	default:
	}
	select {
	case ss.out <- o:
		return true
	default:
		ss.close()
		return false
	}
}

// event is what sessions tell Run.
type event struct {
	sess   *session
	joined bool    // the session is new
	ended  bool    // the session ended (err says why)
	msg    message // a message (nil with joined, ended or err)
	err    error   // with ended: why; alone: a message that did not decode
}

func (s *Server) emit(ev event) bool {
	select {
	case s.events <- ev:
		return true
	case <-s.ctx.Done():
		return false
	}
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		st, _, err := s.ln.Accept(s.ctx)
		if err != nil {
			if s.ctx.Err() == nil && !errors.Is(err, transport.ErrClosed) {
				s.log.Error("fed: listener failed; no more clients can connect", "err", err)
			}
			return
		}
		s.wg.Add(1)
		go s.admit(st)
	}
}

// admit takes a connection whose client proved the token and, if it
// joins, starts its session.
func (s *Server) admit(st transport.Stream) {
	defer s.wg.Done()
	deadline := time.Now().Add(handshakeTimeout)
	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	if s.cfg.record != nil {
		st = s.cfg.record(st)
	}
	// Close stops a join in progress by closing its stream.
	stop := context.AfterFunc(ctx, func() { _ = st.Close() })
	ss, err := s.join(st, deadline)
	stillOpen := stop()
	if err != nil {
		_ = st.Close()
		if s.ctx.Err() == nil {
			s.log.Warn("fed: refused a client", "err", err)
		}
		return
	}
	if !stillOpen {
		_ = st.Close()
		return
	}
	s.liveMu.Lock()
	switch {
	case s.ctx.Err() != nil:
		s.liveMu.Unlock()
		_ = st.Close()
		return
	case s.over != "":
		over := s.over
		s.liveMu.Unlock()
		_ = ss.w.send(&byeMsg{Over: true, Reason: over}, s.cfg.SendTimeout)
		_ = st.Close()
		return
	case len(s.live) >= s.cfg.MaxClients:
		s.liveMu.Unlock()
		s.log.Warn("fed: refused a client: the server is full", "client", ss.info, "max", s.cfg.MaxClients)
		_ = ss.w.send(&byeMsg{Reason: "the server has as many clients as it takes"}, s.cfg.SendTimeout)
		_ = st.Close()
		return
	}
	s.live[ss.info.ID] = ss
	s.liveMu.Unlock()
	defer func() {
		s.liveMu.Lock()
		delete(s.live, ss.info.ID)
		s.liveMu.Unlock()
	}()
	if err := ss.w.send(&welcomeMsg{ID: ss.info.ID}, s.cfg.SendTimeout); err != nil {
		ss.close()
		return
	}
	s.log.Debug("fed: client joined", "client", ss.info)
	s.wg.Add(1)
	go s.write(ss)
	if !s.emit(event{sess: ss, joined: true}) {
		ss.close()
		return
	}
	s.read(ss) // until the session ends
}

// join runs the job-token handshake and reads the client's join message.
func (s *Server) join(st transport.Stream, deadline time.Time) (*session, error) {
	w := newWire(st)
	w.setReadDeadline(deadline)
	m, err := w.recv(func(k msgKind) int {
		if k == kindJoin {
			return 4 + maxNameBytes
		}
		return 0
	})
	if err != nil {
		return nil, fmt.Errorf("reading the join message: %w", err)
	}
	j, ok := m.(*joinMsg)
	if !ok {
		return nil, fmt.Errorf("the client sent a %v message before joining", m.kind())
	}
	w.setReadDeadline(time.Time{})
	return &session{
		info: ClientInfo{ID: s.nextID.Add(1), Name: j.Name},
		w:    w,
		out:  make(chan outgoing, 8),
		done: make(chan struct{}),
	}, nil
}

// limit is how long a message of kind k from a client may be.
func (s *Server) limit(k msgKind) int {
	switch k {
	case kindPublicKey:
		return 72
	case kindUpdate:
		return 8 + 8 + 4 + maxMapEntries*(4+maxStringBytes+8) + 4 + 4*s.dims
	case kindMasked:
		return 8 + 4 + 8*(s.dims+1)
	case kindReveal:
		return 8 + 32 + 4 + 40*s.cfg.MaxClients
	case kindFailed:
		return 8 + 4 + maxStringBytes
	}
	return 0 // a client never sends the others
}

func (s *Server) read(ss *session) {
	for {
		m, err := ss.w.recv(s.limit)
		switch {
		case err == nil:
			if s.cfg.observe != nil {
				s.cfg.observe(ss.info, m)
			}
			if !s.emit(event{sess: ss, msg: m}) {
				ss.close()
				return
			}
		case errors.Is(err, errMalformed):
			if !s.emit(event{sess: ss, err: err}) {
				ss.close()
				return
			}
		default:
			ss.close()
			s.emit(event{sess: ss, ended: true, err: err})
			return
		}
	}
}

func (s *Server) write(ss *session) {
	defer s.wg.Done()
	for {
		select {
		case o := <-ss.out:
			err := ss.w.sendPayload(o.kind, o.task, o.payload, s.cfg.SendTimeout)
			if o.sent != nil {
				close(o.sent)
			}
			if err != nil {
				s.log.Warn("fed: dropping a client that does not take its messages", "client", ss.info, "err", err)
				ss.close()
				return
			}
		case <-ss.done:
			return
		}
	}
}

// maxWeights is the largest model whose messages fit in one frame.
func maxWeights(secure bool) int {
	const overhead = 64 << 10 // the messages' other fields: ids, config
	if secure {
		return (transport.MaxPayload - overhead) / 8
	}
	return (transport.MaxPayload - overhead - maxMapEntries*(8+2*maxStringBytes)) / 4
}

// newTask draws a task id: unique per attempt, and unpredictable, so that
// no result for another attempt (or another server's) can pass for one of
// this attempt.
func newTask() (uint64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("fed: task id: %w", err)
	}
	return binary.LittleEndian.Uint64(b[:]) | 1, nil // never 0, the id of no task
}
