package collective

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/internal/xfer"
	"github.com/ringo-ml/ringo/transport"
)

// Send sends buf to rank peer, to be received by the matching Recv(peer's
// view: from this rank, with the same tag and count).
//
// Point-to-point messages travel on connections of their own, one per
// direction of each pair of ranks, made when first used, so they never
// queue behind collectives. Sends from one rank to one peer are matched
// with that peer's Recvs from this rank in issue order: the k-th Send meets
// the k-th Recv, and a tag or count that differs fails both with
// ErrMismatch. Send returns once buf is handed to the connection, which may
// be before or after the peer's Recv starts (as MPI_Send): a rank that
// sends and receives with the same peer at once should use SendAsync.
//
// A Send whose bytes the connection took returns nil, also when the peer
// receives the message and closes its communicator at once. An error means
// the connection had not taken the whole message when the call ended (the
// communicator failed, the call was given up or timed out, or the peer
// left): the peer may or may not get it, and the communicator is aborted.
func Send[T Elem](ctx context.Context, c *Comm, buf []T, peer, tag int) error {
	return c.p2pCall(ctx, true, peer, signature[T](kindSendRecv, 0, len(buf), tag), kernel.Bytes(buf))
}

// Recv receives into buf the message the matching Send of rank peer sent
// (see Send).
func Recv[T Elem](ctx context.Context, c *Comm, buf []T, peer, tag int) error {
	return c.p2pCall(ctx, false, peer, signature[T](kindSendRecv, 0, len(buf), tag), kernel.Bytes(buf))
}

// SendAsync is Send, returning at once; buf must not change until the Work
// is done. Its place among the Sends to peer is taken when it is called.
func SendAsync[T Elem](ctx context.Context, c *Comm, buf []T, peer, tag int) *Work {
	return c.p2pAsync(ctx, true, peer, signature[T](kindSendRecv, 0, len(buf), tag), kernel.Bytes(buf))
}

// RecvAsync is Recv, returning at once; buf must not be read until the Work
// is done. Its place among the Recvs from peer is taken when it is called.
func RecvAsync[T Elem](ctx context.Context, c *Comm, buf []T, peer, tag int) *Work {
	return c.p2pAsync(ctx, false, peer, signature[T](kindSendRecv, 0, len(buf), tag), kernel.Bytes(buf))
}

// p2pLinks are a communicator's point-to-point channels: per peer, one for
// sending and one for receiving, each with its own issue order.
type p2pLinks struct {
	mu     sync.Mutex // guards the links' creation against Close
	closed bool
	out    []*p2pChan // by peer
	in     []*p2pChan
}

type p2pChan struct {
	turn turnstile
	// The rest belongs to the call whose turn it is.
	link         *transport.Link // made on first use
	seq          uint64          // messages so far
	expire, slow *time.Timer     // made on first use, reset by every call
}

// timers arms the channel's timers for one call: the communicator's timeout
// and slow warning (nil channels when they are off). Reused, not made per
// call: a small message should cost no allocation.
func (ch *p2pChan) timers(timeout, slowAt time.Duration) (expire, slow <-chan time.Time) {
	arm := func(t **time.Timer, d time.Duration) <-chan time.Time {
		if d <= 0 {
			return nil
		}
		if *t == nil {
			*t = time.NewTimer(d)
		} else {
			(*t).Reset(d)
		}
		return (*t).C
	}
	return arm(&ch.expire, timeout), arm(&ch.slow, slowAt)
}

// stopTimers ends the call's timers.
func (ch *p2pChan) stopTimers() {
	for _, t := range []*time.Timer{ch.expire, ch.slow} {
		if t != nil {
			t.Stop()
		}
	}
}

func (p *p2pLinks) init(size int) {
	p.out, p.in = make([]*p2pChan, size), make([]*p2pChan, size)
	for i := range size {
		p.out[i], p.in[i] = &p2pChan{}, &p2pChan{}
	}
}

// made lists the links made so far.
func (p *p2pLinks) made() []*transport.Link {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ls []*transport.Link
	for _, chans := range [][]*p2pChan{p.out, p.in} {
		for _, ch := range chans {
			if ch.link != nil {
				ls = append(ls, ch.link)
			}
		}
	}
	return ls
}

// close waits for every point-to-point call issued so far to end and
// refuses new links.
func (p *p2pLinks) close() {
	for _, chans := range [][]*p2pChan{p.out, p.in} {
		for _, ch := range chans {
			_ = ch.turn.wait(context.Background(), ch.turn.take())
			ch.turn.pass()
		}
	}
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
}

// peerGone interrupts the point-to-point calls on the links to peer, whose
// collective link has stopped (it closed its communicator, or was lost):
// the peer will never match them. It is the collective link's OnDead.
//
// A Send is interrupted at once. A Recv is left to its own link once that
// has heard from the peer: the peer has its end, so the messages it sent
// before it left are read before its goodbye there (or the end of the
// connection), and a Recv of one of them succeeds. A link that has heard
// nothing may be a stream the peer never took (the dialer's stream waits
// in the peer's listener until the peer connects too), which nothing would
// end: see awaitPeerEnd.
func (p *p2pLinks) peerGone(peer int, _ error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l := p.out[peer].link; l != nil {
		l.Interrupt(&transport.PeerError{Peer: peer, Err: transport.ErrPeerClosed})
	}
	if l := p.in[peer].link; l != nil && !l.Heard() {
		go awaitPeerEnd(l, peer)
	}
}

// awaitPeerEnd interrupts the receives of l, whose peer has left, unless l
// hears from the peer or ends within closeGrace: a peer that had its end
// says goodbye on it as it leaves (its first message, if it sent one, comes
// before), while a stream the peer never took says nothing.
func awaitPeerEnd(l *transport.Link, peer int) {
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-l.Dead():
	case <-t.C:
		if !l.Heard() {
			l.Interrupt(&transport.PeerError{Peer: peer, Err: transport.ErrPeerClosed})
		}
	}
}

// busy reports whether a point-to-point call runs or waits.
func (p *p2pLinks) busy() bool {
	for _, chans := range [][]*p2pChan{p.out, p.in} {
		for _, ch := range chans {
			if ch.turn.busy() {
				return true
			}
		}
	}
	return false
}

type p2pTicketKey struct{}

// p2pDescribe renders a point-to-point call the way the user wrote it.
func p2pDescribe(send bool, peer int, sig transport.Signature) string {
	what, dir := "Recv", "from"
	if send {
		what, dir = "Send", "to"
	}
	return fmt.Sprintf("%s(%v, count=%d, %s rank %d, tag=%d)", what, kernel.DType(sig.DType), sig.Count, dir, peer, sig.Root)
}

func (c *Comm) p2pCheck(send bool, peer int, sig transport.Signature) error {
	switch {
	case peer < 0 || peer >= c.size:
		return invalidf("%s: rank %d is not a rank of a communicator of %d", p2pDescribe(send, peer, sig), peer, c.size)
	case peer == c.rank:
		return invalidf("%s: a rank cannot send to itself", p2pDescribe(send, peer, sig))
	case sig.Root < 0 || int(sig.Root) > math.MaxInt32:
		return invalidf("%s: tags are 0..%d", p2pDescribe(send, peer, sig), math.MaxInt32)
	}
	return nil
}

func (c *Comm) p2pChan(send bool, peer int) *p2pChan {
	if send {
		return c.p2p.out[peer]
	}
	return c.p2p.in[peer]
}

func (c *Comm) p2pAsync(ctx context.Context, send bool, peer int, sig transport.Signature, buf []byte) *Work {
	if err := c.p2pCheck(send, peer, sig); err != nil {
		return failedWork(fmt.Errorf("ringo: rank %d: %w", c.rank, err))
	}
	w := &p2pWork{c: c, send: send, peer: peer, sig: sig, buf: buf}
	w.issue(ctx, w, c.p2pChan(send, peer).turn.take(), true)
	c.helpers.run(&w.Work)
	return &w.Work
}

// p2pWork is an async Send or Recv: its Work and its arguments.
type p2pWork struct {
	Work
	c    *Comm
	send bool
	peer int
	sig  transport.Signature
	buf  []byte
}

func (w *p2pWork) runCall(ctx context.Context) error {
	return w.c.p2pCall(ctx, w.send, w.peer, w.sig, w.buf)
}

// p2pCall runs one Send or Recv on its turn.
//
// A message's number is its place among the calls of its channel (its
// ticket + 1). Once a call has that place, any way it fails aborts the
// communicator, as a failed collective does: the peer's matching call would
// otherwise wait for this rank, or meet this rank's next call on the
// channel. That holds for a call its caller abandons (ctx done before its
// turn, at it, or during the call) and for one whose connection could not
// be made. Only arguments refused by p2pCheck take no place.
func (c *Comm) p2pCall(ctx context.Context, send bool, peer int, sig transport.Signature, buf []byte) error {
	if err := c.p2pCheck(send, peer, sig); err != nil {
		return fmt.Errorf("ringo: rank %d: %w", c.rank, err)
	}
	name := func() string { return p2pDescribe(send, peer, sig) } // for errors only: it allocates
	ch := c.p2pChan(send, peer)
	var t uint64
	if issued, ok := ctx.Value(p2pTicketKey{}).(*uint64); ok { // an async call's (a *ticketCtx's)
		t = *issued
	} else {
		t = ch.turn.take()
	}
	msg := t + 1
	fail := func(err error, when string) error {
		if ctx.Err() != nil {
			err = ctxError(ctx) // the caller gave up: that is why it failed
		}
		c.failCall(err, fmt.Sprintf("%s, message #%d%s", name(), msg, when))
		return fmt.Errorf("ringo: %s, message #%d, on rank %d: %w", name(), msg, c.rank, c.aborted())
	}
	if err := ch.turn.wait(ctx, t); err != nil {
		// At once, not behind the calls ahead of it: the abort ends them too.
		return fail(err, " before its turn came")
	}
	defer ch.turn.pass()
	switch {
	case c.closed.Load():
		return fmt.Errorf("ringo: %s on rank %d: %w", name(), c.rank, ErrClosed)
	case c.fail.Err() != nil:
		return fmt.Errorf("ringo: %s on rank %d: %w", name(), c.rank, c.aborted())
	case ctx.Err() != nil:
		return fail(ctx.Err(), "")
	}
	ch.seq = msg
	expire, slow := ch.timers(c.timeout, c.slowAt)
	defer ch.stopTimers()
	l, err := c.p2pLink(ctx, send, peer, ch, expire)
	if err != nil {
		return fail(err, "")
	}
	l.BeginOp(ctx, transport.Header{Comm: c.id, Seq: ch.seq, Sig: sig}, expire, slow)
	// A peer whose collective link has stopped will never match this call
	// (but see peerGone: a Recv may still find the peer's last messages):
	// checked after BeginOp, which clears an earlier interrupt, so that a
	// stop from now on interrupts the call (peerGone) and one before is
	// seen here.
	if cl := c.links[peer]; cl != nil {
		select {
		case <-cl.Dead():
			if send {
				l.Interrupt(&transport.PeerError{Peer: peer, Err: transport.ErrPeerClosed})
			} else if !l.Heard() {
				go awaitPeerEnd(l, peer)
			}
		default:
		}
	}
	if send {
		err = xfer.Send(l, buf)
	} else {
		err = xfer.Recv(l, buf)
	}
	l.End()
	if err == nil {
		return nil
	}
	err = fail(err, "")
	l.Quiesce()
	return err
}

// p2pLink returns the channel's link, connecting it on first use.
func (c *Comm) p2pLink(ctx context.Context, send bool, peer int, ch *p2pChan, expire <-chan time.Time) (*transport.Link, error) {
	if ch.link != nil {
		return ch.link, nil
	}
	from, to := c.world.rank(c.rank), c.world.rank(peer)
	if !send {
		from, to = to, from
	}
	// First use only: wait for the peer's side until the timeout, or until
	// its collective link says it is gone.
	var gone <-chan struct{}
	if cl := c.links[peer]; cl != nil {
		gone = cl.Dead()
	}
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// A Recv gives a peer that left closeGrace more: its last Send may
		// have made the connection this rank is taking (see awaitPeerEnd).
		var grace <-chan time.Time
		gone := gone
		for {
			select {
			case <-expire:
				cancel(fmt.Errorf("%w: rank %d did not come to connect within %v", ErrTimeout, peer, c.timeout))
				return
			case <-gone:
				if send {
					cancel(&transport.PeerError{Peer: peer, Err: transport.ErrPeerClosed})
					return
				}
				gone = nil
				t := time.NewTimer(closeGrace)
				defer t.Stop()
				grace = t.C
			case <-grace:
				cancel(&transport.PeerError{Peer: peer, Err: transport.ErrPeerClosed})
				return
			case <-c.fail.Done(): // the peer's abort, say: nobody waits for anything now
				cancel(c.Err())
				return
			case <-stop:
				return
			}
		}
	}()
	s, err := c.world.conn.connect(cctx, channelOf(c.world.channel, "p2p", uint64(from), uint64(to)), c.world.rank(peer))
	if err != nil {
		return nil, c.connectError(ctx, cctx, peer, gone, err)
	}
	opt := c.linkOptions()
	opt.OnSlow = func(peer int, what string) {
		c.log.Warn("ringo: point-to-point call is waiting for a rank", "waiting_for_rank", peer, "to", what, "after", c.slowAt)
	}
	l := transport.NewLinkWith(peer, transport.NewConn(s), c.fail, c.log, opt)
	c.p2p.mu.Lock()
	defer c.p2p.mu.Unlock()
	if c.p2p.closed {
		l.Shutdown(false, 0)
		return nil, ErrClosed
	}
	ch.link = l
	return l, nil
}

// connectError says why a point-to-point link to peer could not be made
// (err): the caller gave up (ctx); the peer's collective link stopped or the
// timeout came (cctx's cause); or the peer is gone without a word yet. A
// dial refused or cut means the peer's communicator has closed, and its
// abort notice or goodbye on the collective link says why: it is waited
// for (at most closeGrace; gone is that link's Dead) and reported instead
// of the refused dial.
func (c *Comm) connectError(ctx, cctx context.Context, peer int, gone <-chan struct{}, err error) error {
	if ctx.Err() != nil {
		return err
	}
	if cause := context.Cause(cctx); cause != nil {
		return cause
	}
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-c.fail.Done():
		return c.fail.Err() // the peer's reason, with which the communicator failed
	case <-gone:
		if err := c.fail.Err(); err != nil {
			return err
		}
		return &transport.PeerError{Peer: peer, Err: fmt.Errorf("%w: %w", transport.ErrPeerClosed, err)}
	case <-t.C:
		return &transport.PeerError{Peer: peer, Err: fmt.Errorf("%w: %w", ErrPeerLost, err)}
	}
}
