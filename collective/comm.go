package collective

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringo-ml/ringo/internal/codec"
	"github.com/ringo-ml/ringo/link"
	"github.com/ringo-ml/ringo/ring"
	"github.com/ringo-ml/ringo/transport"
)

// DefaultTimeout bounds every call (and forming a communicator) unless
// Config.Timeout says otherwise.
const DefaultTimeout = 5 * time.Minute

// probeAfter is how long a receive waits before it tells the peer which call
// it is in: long enough that a normal call never probes on a quiet link,
// short enough that two ranks both waiting in different calls find out fast.
const probeAfter = 100 * time.Millisecond

// closeGrace is how long Close waits for its goodbye to be written.
const closeGrace = 2 * time.Second

// abortGrace is how long an aborted communicator keeps its connections open
// after sending its abort notices, unless Close closes them first: a peer
// reads a notice before the end of a connection closed right behind it
// (transport.Link reads what is left before it reports a loss), but a
// network connection closed with bytes unread may drop what it had not
// yet sent.
const abortGrace = time.Second

// noticeWait bounds how long an abort notice waits for the frame being
// written on its connection (the notice goes after it).
const noticeWait = 200 * time.Millisecond

// Comm is one rank's membership of a communicator.
type Comm struct {
	rank, size int
	id         uint32
	timeout    time.Duration
	log        *slog.Logger
	cfg        Config // what the communicator was made with, for its children
	world      world

	p2p p2pLinks // Send and Recv, on connections of their own

	links []*transport.Link // by peer rank; nil at this rank
	peers []link.Link       // the same links as the algorithms see them
	ring  *ring.Ring
	// ringRev runs the other way over the same links (bidirectional ring).
	ringRev *ring.Ring
	// codec is Config.Compression; compressed its ring, made on first use.
	codec      codec.Kind
	compressed *ring.Compressed
	algo       algorithm // forced by Config.Algorithm, or algoAuto
	model      costModel // prices the algorithms algo may choose among
	// topo is where the ranks run; local and remote price the links
	// within a host and between hosts, for the hierarchical schedules,
	// which run over hierLocal (this host's ranks) and hierCross (one
	// rank per host), nil unless topo.hierarchical().
	topo                 topology
	local, remote        costModel
	hierLocal, hierCross *ring.Ring
	// localPeers and crossPeers are the same links as the trees see them:
	// by local rank (this host's ranks), by host (this local rank's).
	localPeers, crossPeers []link.Link
	// scratch backs the small algorithms' receive buffers, work the copy a
	// Reduce reduces (8-byte aligned, grown once as needed).
	scratch, work []uint64
	fail          *transport.Failure

	turn    turnstile // one call at a time, in the order they were issued
	helpers helpers   // the goroutines that run async calls
	closed  atomic.Bool
	seq     uint64
	cur     transport.Signature
	timer   *time.Timer
	slow    *time.Timer // fires SlowWarning into a call: "who is missing"
	slowAt  time.Duration
	rec     recorder

	// callCtx is the context of the call in progress: an error that is its
	// cancellation is reported as the call being abandoned.
	callCtx context.Context

	closeOnce  sync.Once
	abortClose *time.Timer // closes the connections abortGrace after an abort
	abortMu    sync.Mutex
	// noticed is closed once onFail has told the peers why the
	// communicator failed (or given up trying).
	noticed chan struct{}
	// built is closed once newComm has made every link: a link that fails
	// at once (its peer gave up already) runs onFail on its reader, which
	// must not read the links while they are being made.
	built chan struct{}
}

// newComm wires a communicator over streams to every peer (nil at rank).
func newComm(rank, size int, streams []transport.Stream, cfg Config, w world) *Comm {
	c := &Comm{
		rank:    rank,
		size:    size,
		id:      uint32(w.channel),
		cfg:     cfg,
		world:   w,
		timeout: cfg.timeout(),
		log:     cfg.logger().With("rank", rank),
		links:   make([]*transport.Link, size),
		timer:   time.NewTimer(time.Hour),
		slow:    time.NewTimer(time.Hour),
		slowAt:  cfg.slowWarning(),
		noticed: make(chan struct{}),
		built:   make(chan struct{}),
	}
	defer close(c.built)
	c.algo, _ = parseAlgorithm(cfg.Algorithm) // New and Local have checked them
	place := w.placement()
	c.topo = newTopology(rank, size, w.rank, place.host)
	c.model = modelOf(c.topo.flatCost(place))
	c.local, c.remote = modelOf(place.local), modelOf(place.remote)
	c.codec, _ = parseCompression("Config.Compression", cfg.Compression)
	c.timer.Stop()
	c.slow.Stop()
	linkOpt := c.linkOptions()
	linkOpt.OnSlow = c.slowWait
	linkOpt.OnDead = c.p2p.peerGone
	c.fail = transport.NewFailure(c.onFail)
	c.p2p.init(size)
	for p, s := range streams {
		if s != nil {
			c.links[p] = transport.NewLinkWith(p, transport.NewConn(s), c.fail, c.log, linkOpt)
		}
	}
	c.peers = make([]link.Link, size)
	for p, l := range c.links {
		if l != nil {
			c.peers[p] = l
		}
	}
	var left, right link.Link
	if size > 1 {
		left, right = c.links[(rank+size-1)%size], c.links[(rank+1)%size]
	}
	c.ring = ring.New(rank, size, left, right, ring.Options{
		SegmentBytes: cfg.SegmentBytes, MinSegmentBytes: cfg.MinSegmentBytes, Depth: cfg.PipelineDepth,
	})
	c.ringRev = c.ring.Reversed()
	if c.topo.hierarchical() {
		c.hierLocal = subRing(c, c.topo.localRanks, c.topo.localRank)
		c.hierCross = subRing(c, c.topo.crossRanks, c.topo.hostIndex)
		c.localPeers, c.crossPeers = subPeers(c, c.topo.localRanks), subPeers(c, c.topo.crossRanks)
	}
	return c
}

// subPeers are c's links to ranks, indexed as ranks is (nil at this rank).
func subPeers(c *Comm, ranks []int) []link.Link {
	peers := make([]link.Link, len(ranks))
	for i, r := range ranks {
		peers[i] = c.peers[r]
	}
	return peers
}

// subRing is the ring through ranks (ascending) of c's links, at place i.
func subRing(c *Comm, ranks []int, i int) *ring.Ring {
	n := len(ranks)
	left, right := c.links[ranks[(i+n-1)%n]], c.links[ranks[(i+1)%n]]
	return ring.New(i, n, left, right, ring.Options{
		SegmentBytes: c.cfg.SegmentBytes, MinSegmentBytes: c.cfg.MinSegmentBytes, Depth: c.cfg.PipelineDepth,
	})
}

// linkOptions are the settings of the communicator's links.
func (c *Comm) linkOptions() transport.LinkOptions {
	return transport.LinkOptions{Heartbeat: c.cfg.heartbeat(true), ProbeAfter: probeAfter}
}

// Rank is this rank's index in the communicator.
func (c *Comm) Rank() int { return c.rank }

// Size is the number of ranks.
func (c *Comm) Size() int { return c.size }

// Err returns the error that aborted the communicator, or nil.
func (c *Comm) Err() error {
	if err := c.fail.Err(); err != nil {
		return abortError(c.explain(err))
	}
	return nil
}

// aborted returns the error of a failed communicator (nil if it has not
// failed) once the peers have been told why: a caller that exits on the
// error leaves the notices with the connections.
func (c *Comm) aborted() error {
	if c.fail.Err() == nil {
		return nil
	}
	<-c.noticed
	return c.Err()
}

// Abort fails the communicator on every rank with cause: every pending and
// later call returns an error matching ErrAborted. The peers get this
// rank's description of cause and the sentinels it matches (errors.Is),
// also when cause is the failure of another communicator, whose reason and
// rank numbers are not this one's.
func (c *Comm) Abort(cause error) {
	if cause == nil {
		cause = errors.New("no reason given")
	}
	c.fail.Fail(fmt.Errorf("rank %d called Abort: %w", c.rank, foreign{cause}))
}

// foreign is an error from outside the communicator that becomes the cause
// of its failure (Abort's cause, the cause of a cancelled context): it says
// what err says and matches what err matches, but it does not give up the
// transport's errors err may hold. Those describe another communicator's
// failure, and taken for this one's they would be passed on as this
// communicator's reason, or name ranks of the other one as ranks of this.
type foreign struct{ err error }

func (f foreign) Error() string        { return f.err.Error() }
func (f foreign) Is(target error) bool { return errors.Is(f.err, target) }

func (f foreign) As(target any) bool {
	switch target.(type) {
	case **transport.RemoteAbortError, **transport.MismatchError, **transport.PeerError:
		return false
	}
	return errors.As(f.err, target)
}

// Close ends the communicator: it says goodbye to the peers, closes every
// connection and waits for every goroutine it started. A call still running
// on another goroutine is aborted. Close is idempotent and returns nil.
func (c *Comm) Close() error {
	c.closeOnce.Do(func() {
		defer c.helpers.close() // last: after the calls ahead have ended and the turn is passed
		if c.turn.busy() || c.p2p.busy() {
			c.fail.Fail(fmt.Errorf("%w: rank %d closed the communicator during a call", ErrClosed, c.rank))
		}
		c.closed.Store(true)
		// Our turn comes once every call issued before has returned (at
		// once: they see the communicator closed or aborted).
		_ = c.turn.wait(context.Background(), c.turn.take())
		defer c.turn.pass()
		c.p2p.close()
		graceful := c.fail.Err() == nil
		if !graceful {
			<-c.noticed // the notices go before the connections close
		}
		c.abortMu.Lock()
		if c.abortClose != nil {
			c.abortClose.Stop()
		}
		c.abortMu.Unlock()
		var wg sync.WaitGroup
		for _, l := range c.allLinks() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.Shutdown(graceful, closeGrace)
			}()
		}
		wg.Wait()
		c.world.conn.release()
		if c.compressed != nil {
			c.compressed.Close()
		}
	})
	return nil
}

// begin starts an operation: it takes the communicator, numbers the
// operation and arms its links with its header, context and deadline.
//
// A call's number is its place in the issue order (its ticket + 1), so a
// call that never runs still has one. A call its caller abandons (ctx done
// before its turn or at it) takes its place all the same: it aborts the
// communicator, on every rank, so that no rank's next call can pair with
// its peers' abandoned one. Before its turn it does so at once, without
// waiting for the calls ahead of it (the abort ends them too).
func (c *Comm) begin(ctx context.Context, sig transport.Signature) error {
	t := ticketOf(ctx, c)
	if err := c.turn.wait(ctx, t); err != nil {
		return c.abandoned(ctx, sig, t+1, " before its turn came")
	}
	if c.closed.Load() {
		c.turn.pass()
		return fmt.Errorf("ringo: %s on rank %d: %w", describe(sig), c.rank, ErrClosed)
	}
	if err := c.aborted(); err != nil {
		c.turn.pass()
		return fmt.Errorf("ringo: %s on rank %d: %w", describe(sig), c.rank, err)
	}
	c.seq = t + 1
	c.cur = sig
	c.callCtx = ctx
	c.rec.begin(c.seq, sig, time.Now())
	if ctx.Err() != nil {
		c.rec.end(c.seq, true)
		c.callCtx = nil
		err := c.abandoned(ctx, sig, c.seq, "")
		c.turn.pass()
		return err
	}
	var expire, slow <-chan time.Time
	if c.timeout > 0 {
		c.timer.Reset(c.timeout)
		expire = c.timer.C
	}
	if c.slowAt > 0 {
		c.slow.Reset(c.slowAt)
		slow = c.slow.C
	}
	hdr := transport.Header{Comm: c.id, Seq: c.seq, Sig: sig}
	for _, l := range c.links {
		if l != nil {
			l.BeginOp(ctx, hdr, expire, slow)
		}
	}
	return nil
}

// abandoned aborts the communicator for call sig, number op, which its
// caller abandoned (ctx is done) before it sent anything, and returns the
// call's error. when says at which point, for the cause.
func (c *Comm) abandoned(ctx context.Context, sig transport.Signature, op uint64, when string) error {
	call := fmt.Sprintf("%s at op #%d%s", describe(sig), op, when)
	c.fail.Fail(fmt.Errorf("rank %d abandoned %s: %w", c.rank, call, ctxError(ctx)))
	return fmt.Errorf("ringo: %s op #%d on rank %d: %w", describe(sig), op, c.rank, c.aborted())
}

// ctxError is the error of a done context: its Err, which the abort's class
// (abortcode.go) and errors.Is go by, and its cause when it has its own
// (foreign: it may be another communicator's failure).
func ctxError(ctx context.Context) error {
	err, cause := ctx.Err(), context.Cause(ctx)
	if cause == nil || cause == err {
		return err
	}
	return fmt.Errorf("%w: %w", err, foreign{cause})
}

// slowWait logs a call that has waited SlowWarning on one peer: the first
// question about a stuck job is which rank it is waiting for.
func (c *Comm) slowWait(peer int, what string) {
	heard, op := c.links[peer].LastHeard()
	c.log.Warn("ringo: call is waiting for a rank",
		"call", describe(c.cur), "op", c.seq, "waiting_for_rank", peer, "to", what,
		"after", c.slowAt, "rank_last_op", op, "rank_last_heard_ago", time.Since(heard).Round(time.Millisecond))
}

// end finishes the operation begin started. A failed operation aborts the
// communicator: its peers are somewhere in the same operation and would
// otherwise wait for this rank forever.
func (c *Comm) end(err error) error {
	ctx := c.callCtx
	c.callCtx = nil
	c.timer.Stop()
	c.slow.Stop()
	c.rec.end(c.seq, err != nil)
	for _, l := range c.links {
		if l != nil {
			l.End()
		}
	}
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Cause(ctx)) {
			err = ctxError(ctx) // the cause alone may not say it is a cancellation
		}
		err = c.opError(err)
		// The call's buffers go back to the caller: make sure no link is
		// still reading into them or writing from them.
		for _, l := range c.links {
			if l != nil {
				l.Quiesce()
			}
		}
	}
	c.turn.pass()
	return err
}

// opError turns the error an operation stopped on into the error it returns,
// aborting the communicator with a cause that names this rank and the call.
func (c *Comm) opError(err error) error {
	c.failCall(err, fmt.Sprintf("%s at op #%d", describe(c.cur), c.seq))
	return fmt.Errorf("ringo: %s op #%d on rank %d: %w", describe(c.cur), c.seq, c.rank, c.aborted())
}

// failCall aborts the communicator after a call (named by call, e.g.
// "AllReduce(…) at op #3") failed with err, with a cause that names this
// rank and the call and keeps err's class.
func (c *Comm) failCall(err error, call string) {
	switch {
	case errors.Is(err, ErrTimeout):
		c.fail.Fail(fmt.Errorf("rank %d: %s: %w after %v", c.rank, call, ErrTimeout, c.timeout))
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		c.fail.Fail(fmt.Errorf("rank %d abandoned %s: %w", c.rank, call, err))
	case errors.Is(err, ErrInvalid):
		c.fail.Fail(fmt.Errorf("rank %d called %s: %w", c.rank, call, err))
	default:
		c.fail.Fail(err)
	}
}

// explain rewrites transport errors in the words of the calls that caused them.
func (c *Comm) explain(err error) error {
	var mm *transport.MismatchError
	if errors.As(err, &mm) {
		g, w := mm.Got, mm.Want
		if kind(g.Sig.Kind) == kindSendRecv && kind(w.Sig.Kind) == kindSendRecv {
			return fmt.Errorf("%w: message #%d from rank %d to rank %d: sent as %s, received as %s",
				ErrMismatch, g.Seq, mm.Peer, c.rank, p2pDescribe(true, c.rank, g.Sig), p2pDescribe(false, mm.Peer, w.Sig))
		}
		if g.Seq == w.Seq && g.Sig == w.Sig {
			return fmt.Errorf("%w: rank %d sent frame %d of %d bytes in %s op #%d; rank %d expected frame %d of %d bytes",
				ErrMismatch, mm.Peer, g.Index, g.Len, describe(g.Sig), g.Seq, c.rank, w.Index, w.Len)
		}
		return fmt.Errorf("%w: rank %d called %s at op #%d; rank %d called %s at op #%d",
			ErrMismatch, mm.Peer, describe(g.Sig), g.Seq, c.rank, describe(w.Sig), w.Seq)
	}
	var ra *transport.RemoteAbortError
	if errors.As(err, &ra) {
		return remoteAbort{ra}
	}
	var pe *transport.PeerError
	if errors.As(err, &pe) && errors.Is(err, ErrPeerLost) {
		return fmt.Errorf("rank %d lost rank %d: %w", c.rank, pe.Peer, err)
	}
	if errors.As(err, &pe) && errors.Is(err, transport.ErrPeerClosed) {
		return fmt.Errorf("rank %d closed its communicator while rank %d still needed it: %w", pe.Peer, c.rank, err)
	}
	return err
}

// onFail runs once, when the communicator fails: it tells every peer why
// (best effort, never waiting long behind a stuck write) and closes the
// connections abortGrace later so that nothing stays blocked on them.
func (c *Comm) onFail(err error) {
	defer close(c.noticed)
	<-c.built
	err = c.explain(err)
	c.log.Warn("ringo: communicator aborted", "err", err)
	c.logStatus("ringo: at the abort")
	hdr := transport.Header{Type: transport.Abort, Comm: c.id}
	reason := append([]byte{abortCode(err)}, err.Error()...)
	var remote *transport.RemoteAbortError
	if errors.As(err, &remote) {
		// A peer's notice (Abort and ctxError keep other communicators'
		// out of reach): pass its reason on unchanged, it names its rank.
		reason = append([]byte{remote.Code}, remote.Reason...)
	}
	links := c.allLinks()
	var wg sync.WaitGroup // in parallel: at most noticeWait in all, not per link
	for _, l := range links {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := hdr
			l.Notify(&h, reason, noticeWait)
		}()
	}
	wg.Wait()
	c.abortMu.Lock()
	c.abortClose = time.AfterFunc(abortGrace, func() {
		for _, l := range links {
			_ = l.Conn().Close()
		}
	})
	c.abortMu.Unlock()
}

// allLinks lists the collective links and the point-to-point links made so
// far.
func (c *Comm) allLinks() []*transport.Link {
	var ls []*transport.Link
	for _, l := range c.links {
		if l != nil {
			ls = append(ls, l)
		}
	}
	return append(ls, c.p2p.made()...)
}
