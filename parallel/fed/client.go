package fed

import (
	"context"
	"crypto/ecdh"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/ringo-ml/ringo/transport"
)

// FitIns is a client's task: train from the global weights.
type FitIns struct {
	Round int
	// Weights are the global weights, the client's own copy: Fit may
	// train them in place and return them.
	Weights []float32
	// Config is the strategy's (see FedAvg.Config, FedProx).
	Config map[string]string
	// Secure says whether the update will travel under secure
	// aggregation (then FitRes.Metrics are not sent).
	Secure bool
}

// ProximalMu is FedProx's μ for this round (0 when the strategy is not
// FedProx).
func (ins *FitIns) ProximalMu() (float64, error) {
	v, ok := ins.Config[ProximalMuKey]
	if !ok {
		return 0, nil
	}
	mu, err := strconv.ParseFloat(v, 64)
	if err != nil || mu < 0 {
		return 0, fmt.Errorf("fed: the server's %s %q is not a non-negative number", ProximalMuKey, v)
	}
	return mu, nil
}

// FitRes is what a client's training produced.
type FitRes struct {
	// Weights are the trained weights, as many as FitIns.Weights.
	Weights []float32
	// Examples is the number of samples trained on: the weight of this
	// result in the average.
	Examples int
	// Metrics are sent to the server in the clear (never under secure
	// aggregation).
	Metrics map[string]float64
}

// FitFunc trains locally, for example E epochs over the client's own data.
// It should return soon after ctx ends: the server has moved on, or the
// client is leaving.
type FitFunc func(ctx context.Context, ins *FitIns) (FitRes, error)

// ClientConfig configures a Client. Zero fields take their defaults.
type ClientConfig struct {
	// Addr is the server's address.
	Addr string
	// Transport must be the server's. Default TCP.
	Transport Transport
	// ServerFingerprint is the fingerprint of the server's certificate
	// (Server.Fingerprint), required with TLS and QUIC.
	ServerFingerprint string
	// Certificate is the client's TLS identity; nil makes an ephemeral one.
	Certificate *transport.Certificate
	// Token is the job's shared secret; Job its name.
	Token []byte
	Job   string
	// Name is what the client calls itself (at most 256 bytes); it orders
	// the clients and appears in the server's logs.
	Name string
	// Fit is the local training.
	Fit FitFunc
	// RequireSecure makes the client refuse tasks that would send its
	// update in the clear.
	RequireSecure bool
	// MinBackoff and MaxBackoff bound the wait before reconnecting after a
	// failed connection; it doubles from Min to Max, with jitter. Defaults
	// 100 ms and 10 s.
	MinBackoff, MaxBackoff time.Duration
	// SendTimeout bounds the write of one message. Default 1 min.
	SendTimeout time.Duration
	// Logger receives the client's notes. Default slog.Default().
	Logger *slog.Logger
}

// Client trains for a federated server: it connects, waits for tasks, runs
// Fit on each and sends the result back, reconnecting when the connection
// fails.
type Client struct {
	cfg  ClientConfig
	log  *slog.Logger
	cert *transport.Certificate
}

// NewClient validates cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Transport == "" {
		cfg.Transport = TCP
	}
	if err := cfg.Transport.check(); err != nil {
		return nil, fmt.Errorf("fed: %w", err)
	}
	switch {
	case cfg.Fit == nil:
		return nil, errors.New("fed: a client needs a Fit function")
	case len(cfg.Token) == 0:
		return nil, errors.New("fed: a client needs the job token")
	case len(cfg.Name) > maxNameBytes:
		return nil, fmt.Errorf("fed: a client name of %d bytes (at most %d)", len(cfg.Name), maxNameBytes)
	case cfg.Transport.secure() && cfg.ServerFingerprint == "":
		return nil, fmt.Errorf("fed: %s needs the server's certificate fingerprint", cfg.Transport)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(10*time.Second, cfg.MinBackoff)
	}
	if cfg.SendTimeout <= 0 {
		cfg.SendTimeout = time.Minute
	}
	c := &Client{cfg: cfg, log: cfg.Logger}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("client", cfg.Name)
	if cfg.Transport.secure() {
		c.cert = cfg.Certificate
		if c.cert == nil {
			var err error
			if c.cert, err = transport.NewCertificate(); err != nil {
				return nil, fmt.Errorf("fed: %w", err)
			}
		}
	}
	return c, nil
}

// Run serves the server until it says training is over (Run returns nil)
// or ctx ends (Run returns ctx's error: the client leaves, abandoning any
// task). A lost connection is retried with backoff; a server that refuses
// the job token, or that is not the one whose fingerprint the client
// expects, ends Run with an error matching transport.ErrAuth.
func (c *Client) Run(ctx context.Context) error {
	delay := c.cfg.MinBackoff
	for {
		joined, done, err := c.session(ctx)
		switch {
		case done:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case !joined && permanent(err):
			return fmt.Errorf("fed: client %q: %w", c.cfg.Name, err)
		}
		if joined {
			delay = c.cfg.MinBackoff
		}
		wait := delay/2 + rand.N(delay/2+1)
		c.log.Info("fed: no connection to the server; retrying", "err", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		delay = min(2*delay, c.cfg.MaxBackoff)
	}
}

// limit is how long a message of kind k from the server may be.
func (c *Client) limit(k msgKind) int {
	switch k {
	case kindWelcome:
		return 8
	case kindFit, kindKeys, kindUnmask:
		return transport.MaxPayload
	case kindBye:
		return 1 + 4 + maxStringBytes
	}
	return 0
}

type received struct {
	m   message
	err error
}

// task is the task in progress.
type task struct {
	id     uint64
	cancel context.CancelFunc
	done   chan struct{}
	inbox  chan message // its keys and unmask messages
}

// session connects, joins and serves until the connection ends. joined
// says whether the server admitted the client, done whether it said
// training is over.
func (c *Client) session(ctx context.Context) (joined, done bool, err error) {
	deadline := time.Now().Add(handshakeTimeout)
	dctx, cancel := context.WithDeadline(ctx, deadline)
	st, err := dial(dctx, c.cfg.Transport, c.cfg.Addr, c.cfg.ServerFingerprint, c.cert, c.cfg.Token, c.cfg.Job)
	cancel()
	if err != nil {
		return false, false, err
	}
	stop := context.AfterFunc(ctx, func() { _ = st.Close() })
	defer stop()
	defer st.Close()
	w := newWire(st)
	if err := w.send(&joinMsg{Name: c.cfg.Name}, c.cfg.SendTimeout); err != nil {
		return false, false, err
	}
	w.setReadDeadline(deadline)
	m, err := w.recv(c.limit)
	if err != nil {
		return false, false, fmt.Errorf("joining: %w", err)
	}
	switch m := m.(type) {
	case *welcomeMsg:
	case *byeMsg:
		if m.Over {
			c.log.Info("fed: the server ended training", "reason", m.Reason)
			return false, true, nil
		}
		return false, false, fmt.Errorf("the server turned the client away: %s", m.Reason)
	default:
		return false, false, fmt.Errorf("the server answered the join with a %v message", m.kind())
	}
	self := m.(*welcomeMsg).ID
	w.setReadDeadline(time.Time{})
	c.log.Debug("fed: joined", "id", self)

	msgs := make(chan received)
	quit := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			m, err := w.recv(c.limit)
			select {
			case msgs <- received{m, err}:
			case <-quit:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var cur *task
	defer func() {
		if cur != nil {
			cur.cancel()
			<-cur.done
		}
		_ = st.Close()
		close(quit)
		<-readerDone
	}()
	for {
		select {
		case r := <-msgs:
			if r.err != nil {
				return true, false, r.err
			}
			switch m := r.m.(type) {
			case *fitMsg:
				if cur != nil {
					cur.cancel() // the server moved on: that task is void
					<-cur.done
				}
				cur = c.start(ctx, w, self, m)
			case *keysMsg, *unmaskMsg:
				if cur == nil || cur.id != taskOf(m) {
					c.log.Debug("fed: ignored a message of a task that is over", "message", m.kind())
					continue
				}
				select {
				case cur.inbox <- m:
				default:
					c.log.Warn("fed: the server sent more messages for a task than the protocol has", "message", m.kind())
				}
			case *byeMsg:
				if !m.Over {
					c.log.Warn("fed: the server hung up", "reason", m.Reason)
					return true, false, errors.New("the server hung up: " + m.Reason)
				}
				c.log.Info("fed: the server ended training", "reason", m.Reason)
				return true, true, nil
			default:
				c.log.Warn("fed: ignored an unexpected message", "message", m.kind())
			}
		case <-ctx.Done():
			return true, false, ctx.Err()
		}
	}
}

// start runs a task on a goroutine of its own.
func (c *Client) start(ctx context.Context, w *wire, self uint64, m *fitMsg) *task {
	tctx, cancel := context.WithCancel(ctx)
	t := &task{id: m.Task, cancel: cancel, done: make(chan struct{}), inbox: make(chan message, 2)}
	go func() {
		defer close(t.done)
		defer cancel()
		err := c.runTask(tctx, w, self, m, t.inbox)
		if err == nil || tctx.Err() != nil {
			return
		}
		c.log.Warn("fed: task failed", "round", m.Round, "err", err)
		if err := w.send(&failedMsg{Task: m.Task, Reason: err.Error()}, c.cfg.SendTimeout); err != nil {
			c.log.Debug("fed: could not report the failure", "err", err)
		}
	}()
	return t
}

func (c *Client) runTask(ctx context.Context, w *wire, self uint64, m *fitMsg, inbox <-chan message) error {
	if m.Secure == nil {
		if c.cfg.RequireSecure {
			return errors.New("the client requires secure aggregation")
		}
		res, err := c.fit(ctx, m, false)
		if err != nil {
			return err
		}
		return w.send(&updateMsg{Task: m.Task, Examples: uint64(res.Examples), Metrics: res.Metrics, Weights: res.Weights}, c.cfg.SendTimeout)
	}
	return c.secureTask(ctx, w, self, m, inbox)
}

// fit runs the user's training and checks what it returns.
func (c *Client) fit(ctx context.Context, m *fitMsg, secure bool) (FitRes, error) {
	d := len(m.Weights)
	res, err := c.cfg.Fit(ctx, &FitIns{Round: int(m.Round), Weights: m.Weights, Config: m.Config, Secure: secure})
	switch {
	case err != nil:
		return res, fmt.Errorf("training: %w", err)
	case len(res.Weights) != d:
		return res, fmt.Errorf("training returned %d weights for a model of %d", len(res.Weights), d)
	case res.Examples < 1:
		return res, fmt.Errorf("training returned %d examples", res.Examples)
	}
	if i := firstNonFinite(res.Weights); i >= 0 {
		return res, fmt.Errorf("training diverged: weight %d is %g", i, res.Weights[i])
	}
	return res, nil
}

// secureTask runs the client's side of secure aggregation.
func (c *Client) secureTask(ctx context.Context, w *wire, self uint64, m *fitMsg, inbox <-chan message) error {
	p := m.Secure
	if err := p.check(); err != nil {
		return fmt.Errorf("secure aggregation: %w", err)
	}
	// A fresh key pair and self seed per task: nothing from one round
	// helps unmask another.
	priv, err := newKey()
	if err != nil {
		return err
	}
	seed, err := newSelfSeed()
	if err != nil {
		return err
	}
	var pub [32]byte
	copy(pub[:], priv.PublicKey().Bytes())
	if err := w.send(&publicKeyMsg{Task: m.Task, Key: pub, Commit: selfCommit(m.Task, seed)}, c.cfg.SendTimeout); err != nil {
		return err
	}
	global := slices.Clone(m.Weights)
	// The masks do not depend on the update: agree the keys and expand the
	// masks while Fit trains.
	mctx, stopMasks := context.WithCancel(ctx)
	defer stopMasks()
	masks := make(chan maskResult, 1)
	go func() { masks <- c.prepareMasks(mctx, m, self, pub, priv, seed, inbox) }()
	res, err := c.fit(ctx, m, true)
	if err != nil {
		stopMasks()
		<-masks
		return err
	}
	mr := <-masks
	if mr.err != nil {
		return mr.err
	}
	examples := min(uint64(res.Examples), p.MaxExamples)
	update := make([]uint64, len(global)+1)
	clipped, err := p.encodeUpdate(update, res.Weights, global, examples)
	if err != nil {
		return err
	}
	if clipped > 0 {
		c.log.Warn("fed: clipped update elements to the secure-aggregation range", "round", m.Round, "clipped", clipped, "clip", p.Clip)
	}
	for j, v := range update { // modulo 2^64
		mr.vec[j] += v
	}
	if err := w.send(&maskedMsg{Task: m.Task, Vector: mr.vec}, c.cfg.SendTimeout); err != nil {
		return err
	}
	km, seeds := mr.keys, mr.seeds

	um, err := await[*unmaskMsg](ctx, inbox)
	if err != nil {
		return err
	}
	if err := checkUnmask(um, self, km, p); err != nil {
		return fmt.Errorf("refusing to unmask: %w", err)
	}
	r := &revealMsg{Task: m.Task, SelfSeed: seed, Pairs: make([]pairSeed, len(um.Dropped))}
	for i, id := range um.Dropped {
		r.Pairs[i] = pairSeed{ID: id, Seed: seeds[id]}
	}
	return w.send(r, c.cfg.SendTimeout)
}

// maskResult is the sum of a client's masks, ready for its update.
type maskResult struct {
	keys  *keysMsg
	seeds map[uint64][32]byte // by peer id
	vec   []uint64            // PRG(b_u) + Σ ±PRG(s_uv)
	err   error
}

// prepareMasks waits for the task's keys, agrees a seed with every peer
// and adds up the client's masks.
func (c *Client) prepareMasks(ctx context.Context, m *fitMsg, self uint64, pub [32]byte, priv *ecdh.PrivateKey, seed [32]byte, inbox <-chan message) maskResult {
	km, err := await[*keysMsg](ctx, inbox)
	if err != nil {
		return maskResult{err: err}
	}
	seeds, err := c.agreeAll(m.Task, self, pub, priv, km, m.Secure)
	if err != nil {
		return maskResult{err: err}
	}
	vec := make([]uint64, len(m.Weights)+1)
	var mk masker
	mk.apply(vec, selfMaskKey(m.Task, seed), false)
	for _, pk := range km.Peers {
		if err := ctx.Err(); err != nil {
			return maskResult{err: err}
		}
		if pk.ID != self {
			mk.apply(vec, seeds[pk.ID], !pairAdds(self, pk.ID))
		}
	}
	return maskResult{keys: km, seeds: seeds, vec: vec}
}

// agreeAll computes the pair seed with every other client of the task.
func (c *Client) agreeAll(task, self uint64, pub [32]byte, priv *ecdh.PrivateKey, km *keysMsg, p *secureParams) (map[uint64][32]byte, error) {
	i, found := slices.BinarySearchFunc(km.Peers, self, func(pk peerKey, id uint64) int {
		switch {
		case pk.ID < id:
			return -1
		case pk.ID > id:
			return 1
		}
		return 0
	})
	if !found || km.Peers[i].Key != pub {
		return nil, errors.New("the server's list of keys does not hold this client's key")
	}
	if len(km.Peers) < int(p.MinSurvivors) {
		return nil, fmt.Errorf("%d clients hold keys, fewer than the %d a sum needs", len(km.Peers), p.MinSurvivors)
	}
	seeds := make(map[uint64][32]byte, len(km.Peers)-1)
	for _, pk := range km.Peers {
		if pk.ID == self {
			continue
		}
		s, err := agree(task, self, pk.ID, priv, pk.Key)
		if err != nil {
			return nil, err
		}
		seeds[pk.ID] = s
	}
	return seeds, nil
}

// checkUnmask checks the server's account of who survived before the
// client reveals anything: the survivors and the dropped clients must be
// exactly the clients that agreed keys, with this client among the
// survivors, and the survivors at least MinSurvivors. Revealing the pair
// seeds of a client the server also has the masked update of would expose
// that update, but for its self mask, which its owner reveals only when
// it is among the survivors.
func checkUnmask(um *unmaskMsg, self uint64, km *keysMsg, p *secureParams) error {
	if len(um.Survivors)+len(um.Dropped) != len(km.Peers) {
		return fmt.Errorf("%d survivors and %d dropped clients of %d", len(um.Survivors), len(um.Dropped), len(km.Peers))
	}
	in := make(map[uint64]bool, len(km.Peers))
	for _, pk := range km.Peers {
		in[pk.ID] = true
	}
	for _, id := range slices.Concat(um.Survivors, um.Dropped) {
		if !in[id] {
			return fmt.Errorf("client %d is not one of the task's, or is both a survivor and dropped", id)
		}
		delete(in, id)
	}
	if _, ok := slices.BinarySearch(um.Survivors, self); !ok {
		return errors.New("this client is not among the survivors")
	}
	if len(um.Survivors) < int(p.MinSurvivors) {
		return fmt.Errorf("%d survivors, fewer than %d", len(um.Survivors), p.MinSurvivors)
	}
	return nil
}

// await waits for the task's next message, which must be an M.
func await[M message](ctx context.Context, inbox <-chan message) (M, error) {
	var zero M
	select {
	case m := <-inbox:
		v, ok := m.(M)
		if !ok {
			return zero, fmt.Errorf("the server sent a %v message out of turn", m.kind())
		}
		return v, nil
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}
