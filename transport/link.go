package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringo-ml/ringo/link"
)

// ErrTimeout: an operation outlived its deadline.
var ErrTimeout = errors.New("operation timed out")

// ErrInterrupted: Interrupt ended the operation a call belonged to.
var ErrInterrupted = errors.New("operation interrupted")

// LinkDepth bounds the frames a Link holds queued for sending and the
// receives posted ahead. Schedules must keep fewer in flight per link.
const LinkDepth = 64

// A Link is what ringo's algorithms run over (the contract of package link).
var _ link.Link = (*Link)(nil)

// Link is one communicator's connection to one peer rank. A sender goroutine
// writes queued frames in order; a reader goroutine reads each data frame's
// header, checks it against the receive posted for it and only then reads the
// payload straight into the posted buffer. Any broken connection, mismatched
// frame or abort notice fails the shared Failure, which wakes every waiter.
//
// A link has two sides, and during an operation each may be driven by its own
// goroutine: Send, Flush and FlushAll (the send side) by one, Post and Wait
// (the receive side) by another, so that two schedules can use the two
// directions of one connection at once (a bidirectional ring). Calls on one
// side must not overlap each other. Begin, BeginOp and End are not concurrent
// with any of them: they run on the goroutine that owns the operation, before
// the sides start and after both have returned. Interrupt may be called from
// any goroutine during an operation. LinkOptions.OnSlow may therefore run on
// both sides' goroutines at once.
type Link struct {
	peer int
	conn *Conn
	fail *Failure
	log  *slog.Logger
	opt  LinkOptions

	hbHdr     Header       // the heartbeat frame, kept here so writing it allocates nothing
	lastHeard atomic.Int64 // unix nanoseconds of the last frame from the peer
	heard     atomic.Bool  // a frame has come from the peer
	lastSeq   atomic.Uint64

	sendq   chan outFrame // the send side's data frames and the receive side's probes
	sent    atomic.Uint64
	sentSig chan struct{}

	posts chan inFrame
	recvd chan struct{}
	// payloadMu is held by the reader from taking a posted receive until its
	// payload is in: Quiesce uses it to know no buffer is being written.
	payloadMu sync.Mutex

	stop       chan struct{} // closed by Shutdown
	dead       chan struct{} // closed when the reader has exited
	deadErr    error         // why the reader exited; written before dead is closed
	readerDone chan struct{}
	senderDone chan struct{}
	beat       *time.Timer // the sender's heartbeat timer
	closing    atomic.Bool
	peerBye    atomic.Bool

	// broken is closed by lose when a write fails: the connection is gone,
	// but what the peer wrote before may still be readable and say why
	// (its abort notice), and a failed write must not speak first. The
	// reader reads on until the end (discarding data nobody asked for, by
	// drainBy at the latest) and only then reports the loss: the peer's
	// notice or bye if one came, else brokenErr.
	broken     chan struct{}
	brokenOnce sync.Once
	brokenErr  error
	drainBy    atomic.Int64 // unix nanoseconds; 0 until broken
	// writing says the sender is writing a data frame (the one after sent).
	writing atomic.Bool

	// cur is the operation in progress (or the last one), for the reader to
	// check frames nobody has posted a receive for yet; begun wakes it.
	curMu sync.Mutex
	cur   Header
	begun chan struct{}

	// The operation in progress, set by BeginOp and read by both sides.
	hdr    Header
	ctx    context.Context
	expire <-chan time.Time

	// The send side's state.
	queued    uint64 // data frames queued since the link began (Flush tickets)
	sendIndex uint32
	sendSlow  <-chan time.Time // nil once this side has reported slowness

	// The receive side's state.
	recvIndex uint32
	recvSlow  <-chan time.Time
	probe     *time.Timer // started by a Wait that has waited ProbeAfter
	probed    bool        // a probe went out during this operation

	// halt is closed by Interrupt, after haltErr is set, to wake both sides.
	// A closed halt is replaced by the next BeginOp; an unused one is kept,
	// so that an operation costs no allocation.
	haltMu  sync.Mutex
	halt    chan struct{}
	haltErr error
}

// LinkOptions are a link's settings beyond its connection.
type LinkOptions struct {
	// Heartbeat is how long the peer may stay silent before it counts as
	// lost (a connection cut without a FIN or a reset, a frozen host). The
	// link sends a heartbeat frame after Heartbeat/5 without other frames.
	// Zero disables both (in-process links need neither).
	Heartbeat time.Duration
	// OnSlow is called on the waiting goroutine when a wait outlives the
	// slow channel given to BeginOp; what says "receive" or "send".
	OnSlow func(peer int, what string)
	// OnDead is called once, on the reader's goroutine, when the reader
	// stops (the peer said goodbye or was lost, or the link was shut down),
	// after Dead is closed: for whoever waits on the peer by other links.
	OnDead func(peer int, err error)
	// ProbeAfter is how long a receive waits before it sends the peer a
	// probe naming the current operation (zero: never).
	ProbeAfter time.Duration
}

type outFrame struct {
	hdr     Header
	payload []byte
}

type inFrame struct {
	want Header
	dst  []byte
}

// NewLink starts the goroutines of a link to rank peer over conn. They end when
// Shutdown is called or the failure is recorded.
func NewLink(peer int, conn *Conn, fail *Failure, log *slog.Logger) *Link {
	return NewLinkWith(peer, conn, fail, log, LinkOptions{})
}

// NewLinkWith is NewLink with options.
func NewLinkWith(peer int, conn *Conn, fail *Failure, log *slog.Logger, opt LinkOptions) *Link {
	if log == nil {
		log = slog.Default()
	}
	l := &Link{
		peer:       peer,
		conn:       conn,
		fail:       fail,
		log:        log,
		opt:        opt,
		hbHdr:      Header{Type: Heartbeat},
		sendq:      make(chan outFrame, LinkDepth),
		sentSig:    make(chan struct{}, 1),
		posts:      make(chan inFrame, LinkDepth),
		recvd:      make(chan struct{}, LinkDepth),
		stop:       make(chan struct{}),
		dead:       make(chan struct{}),
		readerDone: make(chan struct{}),
		senderDone: make(chan struct{}),
		begun:      make(chan struct{}, 1),
		broken:     make(chan struct{}),
		ctx:        context.Background(),
		halt:       make(chan struct{}),
	}
	l.lastHeard.Store(time.Now().UnixNano())
	go l.sender()
	go l.reader()
	return l
}

// LastHeard is when the last frame (of any kind) came from the peer, and
// LastSeq the operation number of its last data frame.
func (l *Link) LastHeard() (time.Time, uint64) {
	return time.Unix(0, l.lastHeard.Load()), l.lastSeq.Load()
}

// Heard reports whether any frame has come from the peer: then the peer
// has its end of the connection, and its goodbye or the end of the
// connection will come here too when it leaves.
func (l *Link) Heard() bool { return l.heard.Load() }

// Peer is the rank at the other end.
func (l *Link) Peer() int { return l.peer }

// Conn is the framed connection (for control frames).
func (l *Link) Conn() *Conn { return l.conn }

// Begin starts a new operation: frames sent carry hdr (with Type Data and a
// fresh Index), and receives expect the same. Waits give up when ctx is done,
// when expire fires, or when the communicator fails.
func (l *Link) Begin(ctx context.Context, hdr Header, expire <-chan time.Time) {
	l.BeginOp(ctx, hdr, expire, nil)
}

// BeginOp is Begin with a slow channel: a wait still blocked when it fires
// calls LinkOptions.OnSlow and goes on waiting. Each side reports at most
// once per operation; a timer's channel delivers one tick, so only the side
// (of all the links sharing it) that takes the tick reports.
func (l *Link) BeginOp(ctx context.Context, hdr Header, expire, slow <-chan time.Time) {
	hdr.Type = Data
	l.hdr = hdr
	l.sendIndex, l.recvIndex = 0, 0
	l.ctx, l.expire = ctx, expire
	l.sendSlow, l.recvSlow = slow, slow
	l.probed = false
	l.haltMu.Lock()
	if l.haltErr != nil {
		l.halt, l.haltErr = make(chan struct{}), nil
	}
	l.haltMu.Unlock()
	l.curMu.Lock()
	l.cur = hdr
	l.curMu.Unlock()
	select {
	case l.begun <- struct{}{}:
	default:
	}
}

// End drops the references Begin took.
func (l *Link) End() {
	l.ctx, l.expire = context.Background(), nil
	l.sendSlow, l.recvSlow = nil, nil
}

// Interrupt ends the operation in progress on this link: until the next
// BeginOp, every Send and Post, and every Flush and Wait that has to wait,
// returns an error wrapping ErrInterrupted and cause. Blocked calls wake at
// once. The first call wins; later ones do nothing.
//
// It is for a caller that drives the two sides from two goroutines and must
// stop one because the other failed with an error that does not fail the
// communicator (a timeout is delivered to one waiter only). Like any error,
// it leaves receives posted and frames queued: the caller fails the
// communicator and calls Quiesce before it reuses the operation's buffers.
func (l *Link) Interrupt(cause error) {
	l.haltMu.Lock()
	defer l.haltMu.Unlock()
	if l.haltErr != nil {
		return
	}
	l.haltErr = fmt.Errorf("%w: %w", ErrInterrupted, cause)
	close(l.halt)
}

// haltError is the error Interrupt set. Only call it once halt is seen
// closed: the close orders the write of haltErr before this read.
func (l *Link) haltError() error { return l.haltErr }

// halted returns the interrupt's error if the operation was interrupted.
// Send and Post check it first because their selects may find room in a
// queue as well as a closed halt, and would then pick either.
func (l *Link) halted() error {
	select {
	case <-l.halt:
		return l.haltError()
	default:
		return nil
	}
}

// slowed reports a wait that outlived the slow channel, once per operation
// and side: slow is that side's channel.
func (l *Link) slowed(slow *<-chan time.Time, what string) {
	*slow = nil
	if l.opt.OnSlow != nil {
		l.opt.OnSlow(l.peer, what)
	}
}

// Send queues src as the next data frame and returns its ticket for Flush.
// src must not change until Flush(ticket) returns.
func (l *Link) Send(src []byte) (uint64, error) {
	if len(src) > MaxPayload {
		return 0, fmt.Errorf("transport: a frame of %d bytes exceeds the limit of %d", len(src), MaxPayload)
	}
	if err := l.halted(); err != nil {
		return 0, err
	}
	h := l.hdr
	h.Index = l.sendIndex
	h.Len = uint32(len(src))
	l.sendIndex++
	if ok, err := l.writeNow(&h, src); ok || err != nil {
		if err != nil {
			return 0, err
		}
		l.queued++
		l.sent.Add(1)
		return l.queued, nil
	}
	// A select of one case and a default costs a fraction of the full one
	// below, which locks every channel it names: try it first.
	select {
	case l.sendq <- outFrame{hdr: h, payload: src}:
		l.queued++
		return l.queued, nil
	default:
	}
	select {
	case l.sendq <- outFrame{hdr: h, payload: src}:
		l.queued++
		return l.queued, nil
	case <-l.halt:
		return 0, l.haltError()
	case <-l.fail.Done():
		return 0, l.fail.Err()
	case <-l.ctx.Done():
		return 0, context.Cause(l.ctx)
	case <-l.expire:
		return 0, ErrTimeout
	}
}

// Flush waits until every frame up to ticket has been written.
//
// An interrupt does not undo a frame the connection has taken: a Flush
// interrupted while the sender writes its last frame returns what that
// write returns (waiting for it at most settleWait). A peer that has read
// a message and closed its communicator at once thus does not turn the
// Send of that message into an error.
func (l *Link) Flush(ticket uint64) error {
	for l.sent.Load() < ticket {
		select {
		case <-l.sentSig:
		case <-l.sendSlow:
			l.slowed(&l.sendSlow, "send")
		case <-l.halt:
			if l.settled(ticket) {
				return nil
			}
			return l.haltError()
		case <-l.fail.Done():
			return l.fail.Err()
		case <-l.ctx.Done():
			return context.Cause(l.ctx)
		case <-l.expire:
			return ErrTimeout
		}
	}
	return nil
}

// FlushAll waits until every queued frame has been written.
func (l *Link) FlushAll() error { return l.Flush(l.queued) }

// settleWait bounds how long an interrupted Flush waits for the write of
// its last frame, which the sender had begun, to end.
const settleWait = 100 * time.Millisecond

// settled reports whether every frame up to ticket has been written,
// waiting for that if only the last of them is left and being written.
func (l *Link) settled(ticket uint64) bool {
	if l.sent.Load() >= ticket {
		return true
	}
	if l.sent.Load()+1 != ticket || !l.writing.Load() {
		return false
	}
	t := time.NewTimer(settleWait)
	defer t.Stop()
	for l.sent.Load() < ticket {
		if !l.writing.Load() { // written (sent is up first) or failed
			return l.sent.Load() >= ticket
		}
		select {
		case <-l.sentSig:
		case <-l.fail.Done():
			return l.sent.Load() >= ticket
		case <-t.C:
			return false
		}
	}
	return true
}

// Post asks for the next data frame from the peer to be received into dst; the
// frame must carry exactly len(dst) bytes and the current operation's header.
func (l *Link) Post(dst []byte) error {
	if len(dst) > MaxPayload {
		return fmt.Errorf("transport: a receive of %d bytes exceeds the frame limit of %d", len(dst), MaxPayload)
	}
	if err := l.halted(); err != nil {
		return err
	}
	want := l.hdr
	want.Index = l.recvIndex
	want.Len = uint32(len(dst))
	l.recvIndex++
	select {
	case l.posts <- inFrame{want: want, dst: dst}:
		return nil
	default:
	}
	select {
	case l.posts <- inFrame{want: want, dst: dst}:
		return nil
	case <-l.halt:
		return l.haltError()
	case <-l.dead:
		return l.deadError()
	case <-l.fail.Done():
		return l.fail.Err()
	case <-l.ctx.Done():
		return context.Cause(l.ctx)
	case <-l.expire:
		return ErrTimeout
	}
}

// Wait waits for the oldest posted receive to complete.
func (l *Link) Wait() error {
	select {
	case <-l.recvd:
		return nil
	default:
	}
	if l.conn.canTry {
		// A fast stream's frame is usually microseconds away: yield to the
		// reader a few times before parking, which costs more.
		for range waitYields {
			runtime.Gosched()
			select {
			case <-l.recvd:
				return nil
			default:
			}
		}
	}
	var probe <-chan time.Time
	if l.opt.ProbeAfter > 0 && !l.probed {
		if l.probe == nil {
			l.probe = time.NewTimer(l.opt.ProbeAfter)
		} else {
			l.probe.Reset(l.opt.ProbeAfter)
		}
		defer l.probe.Stop()
		probe = l.probe.C
	}
	for {
		select {
		case <-l.recvd:
			return nil
		case <-probe:
			probe = nil
			l.sendProbe()
			continue
		case <-l.recvSlow:
			l.slowed(&l.recvSlow, "receive")
			continue
		case <-l.halt:
			return l.unlessReceived(l.haltError())
		case <-l.dead:
			return l.unlessReceived(l.deadError())
		case <-l.fail.Done():
			return l.unlessReceived(l.fail.Err())
		case <-l.ctx.Done():
			// The caller gave up: its call is abandoned even if the frame
			// came in meanwhile, and the collective layer aborts the
			// communicator on every rank, so no rank mistakes it for done.
			return context.Cause(l.ctx)
		case <-l.expire:
			return l.unlessReceived(ErrTimeout)
		}
	}
}

// unlessReceived is err, or nil if the receive completed after all: select
// picks among ready cases at random, and a receive that is whole must not
// be reported failed because a later frame (a mismatch, the peer's close)
// was read before Wait looked. A cancelled ctx is not such a case: see Wait.
func (l *Link) unlessReceived(err error) error {
	select {
	case <-l.recvd:
		return nil
	default:
		return err
	}
}

// sendProbe queues a probe naming the current operation, unless the queue is
// full (then frames are flowing and will do the checking).
func (l *Link) sendProbe() {
	l.probed = true
	h := l.hdr
	h.Type = Probe
	select {
	case l.sendq <- outFrame{hdr: h}:
	default:
	}
}

func (l *Link) deadError() error {
	if err := l.fail.Err(); err != nil {
		return err
	}
	return l.deadErr
}

// waitYields is how often Wait yields, on a fast stream, before it parks.
const waitYields = 16

// quiesceWait is how long Quiesce lets a frame in progress finish before it
// closes the connection under it.
const quiesceWait = 100 * time.Millisecond

// Quiesce returns once neither of the link's goroutines touches a buffer the
// caller handed it, after the communicator failed: the reader takes no more
// posts and the sender writes no more frames, and a frame half read or half
// written is given quiesceWait to finish before the connection is closed.
// After it, the buffers of the failed operation are the caller's again.
func (l *Link) Quiesce() {
	idle := func() bool {
		if !l.payloadMu.TryLock() {
			return false
		}
		l.payloadMu.Unlock()
		if !l.conn.wmu.TryLock() {
			return false
		}
		l.conn.wmu.Unlock()
		return true
	}
	if idle() {
		return
	}
	t := time.NewTimer(quiesceWait)
	defer t.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !idle() {
		select {
		case <-tick.C:
		case <-t.C:
			_ = l.conn.Close() // unblocks the read or write in progress
			l.payloadMu.Lock()
			l.payloadMu.Unlock()
			l.conn.wmu.Lock()
			l.conn.wmu.Unlock()
			return
		}
	}
}

// Shutdown ends the link: with bye it first tells the peer (unless the peer
// already said bye, or the communicator failed), waiting at most grace for
// the notice to be written. It closes the connection and waits for both
// goroutines.
func (l *Link) Shutdown(bye bool, grace time.Duration) {
	if !l.closing.CompareAndSwap(false, true) {
		<-l.readerDone
		<-l.senderDone
		return
	}
	if bye && !l.peerBye.Load() && l.fail.Err() == nil {
		select {
		case l.sendq <- outFrame{hdr: Header{Type: Bye}}:
		default:
		}
	}
	close(l.stop)
	t := time.NewTimer(grace)
	select {
	case <-l.senderDone:
	case <-t.C:
	}
	t.Stop()
	_ = l.conn.Close()
	<-l.senderDone
	<-l.readerDone
}

// sender writes queued frames in order. On Shutdown it drains what was queued
// before stop (the bye notice last) and exits.
func (l *Link) sender() {
	defer close(l.senderDone)
	var beat <-chan time.Time
	every := l.opt.Heartbeat / 5
	if every > 0 {
		t := time.NewTimer(every)
		defer t.Stop()
		beat = t.C
		l.beat = t
	}
	wrote := false // since the heartbeat timer was last reset
	for {
		select {
		case f := <-l.sendq: // the cheap receive first: frames often wait
			if l.fail.Err() != nil || !l.write(&f) {
				return
			}
			wrote = true
			continue
		default:
		}
		if wrote && every > 0 {
			l.beat.Reset(every)
		}
		wrote = false
		select {
		case f := <-l.sendq:
			if l.fail.Err() != nil || !l.write(&f) {
				return
			}
			wrote = true
			continue
		case <-beat:
			if err := l.conn.WriteFrame(&l.hbHdr, nil); err != nil {
				l.lose(err)
				return
			}
			l.beat.Reset(every)
			continue
		case <-l.fail.Done():
			return
		case <-l.stop:
		}
		// Stopping: write what is still queued, then leave.
		for {
			select {
			case f := <-l.sendq:
				if !l.write(&f) {
					return
				}
			default:
				return
			}
		}
	}
}

// inlineMax bounds the frames writeNow writes on the caller's goroutine:
// small frames, whose hand-over to the sender would cost more than their
// copy; a large one is copied by the sender while the caller goes on.
const inlineMax = 16 << 10

// writeNow writes the data frame h with src on the caller's goroutine if
// the stream can take it at once without waiting (a shared-memory ring
// with room for it: see Conn.tryWrite) and every frame queued before it is
// written, and reports whether it did. A stream that cannot never does:
// its frames go through the sender, so that Send never waits for the peer.
func (l *Link) writeNow(h *Header, src []byte) (bool, error) {
	if !l.conn.canTry || len(src) > inlineMax || l.sent.Load() != l.queued || l.fail.Err() != nil || l.closing.Load() {
		return false, nil
	}
	if !l.conn.wmu.TryLock() { // a control frame on its way
		return false, nil
	}
	ok, err := l.conn.tryWriteLocked(h, src)
	l.conn.wmu.Unlock()
	if err != nil {
		// The reader says why the stream broke, once it has read what is
		// left of it (bounded by drainWait).
		l.lose(err)
		<-l.dead
		return false, l.deadError()
	}
	return ok, nil
}

func (l *Link) write(f *outFrame) bool {
	data := f.hdr.Type == Data
	if data {
		l.writing.Store(true)
	}
	err := l.conn.WriteFrame(&f.hdr, f.payload)
	f.payload = nil
	if err != nil {
		l.writing.Store(false)
		l.signalSent() // a Flush waiting for this write's outcome looks again
		l.lose(err)
		return false
	}
	switch f.hdr.Type {
	case Bye:
		return false
	case Data: // only data frames have tickets
	default:
		return true
	}
	l.sent.Add(1)
	l.writing.Store(false)
	l.signalSent()
	return true
}

func (l *Link) signalSent() {
	select {
	case l.sentSig <- struct{}{}:
	default:
	}
}

// drainWait bounds how long the reader reads on after a write found the
// connection broken (see broken): what the peer wrote before it went is
// already buffered, so this only matters where a broken connection does
// not end the reads at once.
const drainWait = time.Second

// lose is how a failed write (err) on the connection is reported: by the
// reader, once it has read what the peer wrote before (see broken). Not
// after Shutdown, which closed the connection itself.
func (l *Link) lose(err error) {
	if l.closing.Load() {
		return
	}
	l.brokenOnce.Do(func() {
		l.brokenErr = &PeerError{Peer: l.peer, Err: fmt.Errorf("%w: write: %w", ErrPeerLost, err)}
		by := time.Now().Add(drainWait)
		l.drainBy.Store(by.UnixNano())
		_ = l.conn.SetReadDeadline(by) // also for a read in progress
		close(l.broken)
	})
	// A reader that had already stopped without failing the communicator
	// (the peer said bye) cannot report it: its reason does.
	select {
	case <-l.dead:
		l.fail.Fail(l.deadErr)
	default:
	}
}

func (l *Link) isBroken() bool {
	select {
	case <-l.broken:
		return true
	default:
		return false
	}
}

// Notify tells the peer why the communicator failed: h is an Abort header
// and payload its class byte and reason (cut to the control limit). On a
// NoticeStream the notice goes beside the stream at once, for a peer that
// is not reading it; it also goes as a frame, after the frame being
// written, which is given up to wait to end (Conn.TryWriteControl). Notify
// reports whether either way took it.
func (l *Link) Notify(h *Header, payload []byte, wait time.Duration) bool {
	beside := false
	if l.conn.notes != nil {
		beside = l.conn.notes.Notify(payload) == nil
	}
	return l.conn.TryWriteControl(h, payload, wait) || beside
}

func (l *Link) reader() {
	defer close(l.readerDone)
	var h Header
	hb := l.opt.Heartbeat
	// now is when the reader last looked at the clock: when the last
	// frame came, or later if it then waited for this rank (one look per
	// frame, where each costs tens of nanoseconds).
	now := time.Now()
	for {
		l.setReadDeadline(now)
		if err := l.conn.ReadHeader(&h); err != nil {
			l.die(l.lossError(l.readError(err)), !l.closing.Load())
			return
		}
		now = time.Now()
		l.lastHeard.Store(now.UnixNano())
		if !l.heard.Load() {
			l.heard.Store(true)
		}
		switch h.Type {
		case Heartbeat:
			continue
		case Probe:
			// The peer waits in operation h.Seq: at the same number, this
			// rank must be running the same call. (An older number proves
			// nothing: the frames it waits for may still be on their way.)
			l.curMu.Lock()
			cur := l.cur
			l.curMu.Unlock()
			if h.Seq == cur.Seq && (h.Sig != cur.Sig || h.Comm != cur.Comm) {
				l.die(&MismatchError{Peer: l.peer, Got: h, Want: cur}, true)
				return
			}
			continue
		case Data:
			l.payloadMu.Lock() // released once the payload is in (or refused)
			in, waited, err := l.awaitPost(&h)
			if err == errBroken {
				// Nobody asked for this frame, and now nobody will: read
				// past it for what follows (an abort notice?).
				l.payloadMu.Unlock()
				if err := l.conn.discardPayload(int(h.Len)); err != nil {
					l.die(l.lossError(l.readError(err)), !l.closing.Load())
					return
				}
				continue
			}
			if err != nil {
				l.payloadMu.Unlock()
				var mm *MismatchError
				var ra *RemoteAbortError
				l.die(err, errors.As(err, &mm) || errors.As(err, &ra))
				return
			}
			if !sameFrame(&h, &in.want) {
				l.payloadMu.Unlock()
				l.die(&MismatchError{Peer: l.peer, Got: h, Want: in.want}, true)
				return
			}
			if hb > 0 && waited {
				// Waiting for the post was this rank's time, not the peer's.
				now = time.Now()
				l.setReadDeadline(now)
			}
			err = l.conn.ReadPayload(in.dst)
			l.payloadMu.Unlock()
			l.lastSeq.Store(h.Seq)
			if err != nil {
				l.die(l.lossError(l.readError(err)), !l.closing.Load())
				return
			}
			select {
			case l.recvd <- struct{}{}:
				continue
			default:
			}
			now = time.Now() // what follows is this rank's time, not the peer's
			select {
			case l.recvd <- struct{}{}:
			case <-l.stop:
				l.die(ErrPeerClosed, false)
				return
			case <-l.fail.Done():
				l.die(l.fail.Err(), false)
				return
			}
		case Abort:
			reason := make([]byte, h.Len)
			if err := l.conn.ReadPayload(reason); err != nil {
				l.die(l.lossError(l.readError(err)), !l.closing.Load())
				return
			}
			l.die(remoteAbort(l.peer, reason), true)
			return
		case Bye:
			l.peerBye.Store(true)
			l.die(&PeerError{Peer: l.peer, Err: ErrPeerClosed}, false)
			return
		}
	}
}

// awaitPost returns the receive posted for the data frame h. While there is
// none, it checks h against the operation this rank is running: a frame of
// the same operation number with another signature, or of an operation this
// rank has already finished, is a mismatch found at once, not when a receive
// that may never come is posted.
//
// waited reports whether it had to wait for the receive to be posted.
//
// While it waits, a notice beside the stream (NoticeStream) ends the wait
// with the peer's RemoteAbortError: the peer cannot write an abort frame
// behind this one while nobody reads it. Once a write has found the
// connection broken, it returns errBroken instead of waiting.
func (l *Link) awaitPost(h *Header) (in inFrame, waited bool, err error) {
	for ; ; waited = true {
		// A failed link takes no more posts: their buffers belong to calls
		// that have returned, or are about to, with an error.
		if err := l.fail.Err(); err != nil {
			return inFrame{}, waited, err
		}
		select {
		case in := <-l.posts:
			return in, waited, nil
		default:
		}
		l.curMu.Lock()
		cur := l.cur
		l.curMu.Unlock()
		if cur.Seq != 0 && (h.Seq < cur.Seq || h.Seq == cur.Seq && h.Sig != cur.Sig || h.Comm != cur.Comm) {
			return inFrame{}, waited, &MismatchError{Peer: l.peer, Got: *h, Want: cur}
		}
		select {
		case in := <-l.posts:
			if err := l.fail.Err(); err != nil {
				return inFrame{}, true, err
			}
			return in, true, nil
		case <-l.begun:
		case n := <-l.conn.notices():
			return inFrame{}, true, remoteAbort(l.peer, n)
		case <-l.broken:
			return inFrame{}, true, errBroken
		case <-l.stop:
			return inFrame{}, true, ErrPeerClosed
		case <-l.fail.Done():
			return inFrame{}, true, l.fail.Err()
		}
	}
}

// errBroken says the frame awaitPost was given will never be asked for:
// the connection is broken (a write failed).
var errBroken = errors.New("transport: the connection is broken")

func (l *Link) die(err error, failComm bool) {
	if failComm {
		l.fail.Fail(err) // first, so that whoever wakes on dead sees the failure
	}
	l.deadErr = err
	close(l.dead)
	if !failComm && l.isBroken() && !l.closing.Load() {
		// A write failed: the end of the reads (a bye) is why. After dead
		// is closed, so that either this or lose, which looks at dead
		// after it closed broken, reports it.
		l.fail.Fail(err)
	}
	if l.opt.OnDead != nil {
		l.opt.OnDead(l.peer, err)
	}
}

// setReadDeadline bounds the next read by the heartbeat (from now) and,
// once a write found the connection broken, by the end of the drain.
func (l *Link) setReadDeadline(now time.Time) {
	var dl time.Time
	if hb := l.opt.Heartbeat; hb > 0 {
		dl = now.Add(hb)
	}
	if by := l.drainBy.Load(); by != 0 && (dl.IsZero() || by < dl.UnixNano()) {
		dl = time.Unix(0, by)
	}
	if !dl.IsZero() {
		_ = l.conn.SetReadDeadline(dl)
	}
}

// lossError is how the reader reports the end of its reads (readErr, made
// by readError): as the peer's notice if one came beside the stream (it
// says why the stream ended), else as the failed write that found the
// connection broken first, if one did.
func (l *Link) lossError(readErr error) error {
	select {
	case n := <-l.conn.notices():
		return remoteAbort(l.peer, n)
	default:
	}
	if l.isBroken() {
		return l.brokenErr
	}
	return readErr
}

func (l *Link) readError(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) && l.opt.Heartbeat > 0 {
		return &PeerError{Peer: l.peer, Err: fmt.Errorf("%w: nothing heard for %v (no data, no heartbeat): the host or its link is gone", ErrPeerLost, l.opt.Heartbeat)}
	}
	if errors.Is(err, ErrProtocol) {
		return &PeerError{Peer: l.peer, Err: err}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return &PeerError{Peer: l.peer, Err: fmt.Errorf("%w: connection closed (%w)", ErrPeerLost, err)}
	}
	return &PeerError{Peer: l.peer, Err: fmt.Errorf("%w: %w", ErrPeerLost, err)}
}

// sameFrame compares everything but the frame type, which the reader checked.
func sameFrame(got, want *Header) bool {
	return got.Comm == want.Comm && got.Seq == want.Seq && got.Sig == want.Sig &&
		got.Index == want.Index && got.Len == want.Len
}

// PeerError says which rank a link failure is about.
type PeerError struct {
	Peer int
	Err  error
}

func (e *PeerError) Error() string { return fmt.Sprintf("rank %d: %v", e.Peer, e.Err) }
func (e *PeerError) Unwrap() error { return e.Err }
