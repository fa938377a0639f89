package shm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringo-ml/ringo/transport"
)

// publishBytes is how much a reader copies out (or a writer in) before it
// publishes its position: large payloads then flow through the ring in
// pieces, the reader copying out one while the writer copies in the next.
const publishBytes = 64 << 10

// yieldEvery is how many polls of a spin give the core to other processes
// once (every poll yields to this process's goroutines). Measured with 4
// processes on 2 cores, an 8-byte AllReduce (median us of 3 interleaved
// ringbench sweeps, 2026-11-30): every poll 42, every 2nd 24, every 4th 23,
// never 198 (the spin then holds the core the peer needs).
const yieldEvery = 4

// spinPolls bounds the polls between looks at the clock: past it, each
// poll looks (and soon sleeps), so that a spin of a few microseconds stays
// one even where a yield takes long.
const spinPolls = 1 << 12

// maxSleep bounds one sleep. Every wake-up a sleeper needs is sent (see
// ring), so it only matters if a peer misbehaves: a sleeper then still
// looks again now and then instead of never.
const maxSleep = time.Second

// errPeerGone is a write's error once the peer has closed its end of the
// stream or exited.
var errPeerGone = fmt.Errorf("shm: the peer closed its end or exited: %w", io.ErrClosedPipe)

// Stream is one end of a shared-memory link: it reads the segment the
// peer writes and writes the segment the peer reads. It is a
// transport.Stream: Reads are serialised among themselves, and so are
// Writes; a Read and a Write may run at once. Close unblocks both.
type Stream struct {
	in, out *segment
	spin    time.Duration

	rmu  sync.Mutex
	head uint64 // this side's read position in in; the copy in in is the peer's to read
	wmu  sync.Mutex
	tail uint64 // this side's write position in out

	// control is the authenticated stream the segments were set up over;
	// it stays open so that its end of file tells when the peer is gone.
	control transport.Stream
	watched chan struct{} // closed when the watcher has returned
	gone    atomic.Bool   // the control stream ended: the peer closed or exited
	// notices holds the peer's notice (see Notify), put there by the
	// watcher before it marks the peer gone.
	notices chan []byte

	// A side that sleeps parks on its nudge channel; the watcher sends on
	// it when the peer rings (see sleep), and so do local events (Close, a
	// new deadline). Each side's timer bounds its sleeps.
	nudgeRead, nudgeWrite chan struct{}
	readTimer, writeTimer *time.Timer

	closed        atomic.Bool
	refs          atomic.Int32 // the mappings live while refs > 0
	readDeadline  atomic.Int64 // unix nanoseconds; 0: none
	writeDeadline atomic.Int64
}

var _ transport.NoticeStream = (*Stream)(nil)

// newStream starts a stream over the two segments; it owns them and
// control from now on.
func newStream(in, out *segment, control transport.Stream, opt Options) *Stream {
	s := &Stream{
		in: in, out: out, spin: opt.Spin, control: control, watched: make(chan struct{}),
		notices:   make(chan []byte, 1),
		nudgeRead: make(chan struct{}, 1), nudgeWrite: make(chan struct{}, 1),
		readTimer: stoppedTimer(), writeTimer: stoppedTimer(),
	}
	s.refs.Store(1)
	go s.watch()
	return s
}

func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// The bells the peer rings on the control stream: wake your reader, wake
// your writer.
var bells = [...]byte{'r', 'w'}

// noticeMark starts a notice on the control stream: a 2-byte length
// (little-endian, at most maxNotice) and the notice.
const noticeMark = 'n'

// maxNotice bounds a notice: an abort frame's payload is no longer.
const maxNotice = 4096

// watch reads the control stream until it ends, passing the peer's bells
// on to this side's sleepers and its notice to Notices. It ends because
// the peer closed its stream or exited (the kernel closes a killed
// process's sockets), because this side closed it, or on a byte that is
// neither a bell nor a notice's mark.
func (s *Stream) watch() {
	defer close(s.watched)
	r := bufio.NewReaderSize(s.control, 64)
	for {
		c, err := r.ReadByte()
		switch {
		case err != nil:
		case c == bells[0]:
			nudge(s.nudgeRead)
		case c == bells[1]:
			nudge(s.nudgeWrite)
		case c == noticeMark:
			err = s.readNotice(r)
		default:
			err = fmt.Errorf("%w: the peer sent %#x on the control stream", transport.ErrProtocol, c)
		}
		if err != nil {
			break
		}
	}
	s.gone.Store(true)
	s.nudgeBoth()
}

// readNotice reads a notice after its mark and keeps the first.
func (s *Stream) readNotice(r *bufio.Reader) error {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return err
	}
	size := int(binary.LittleEndian.Uint16(n[:]))
	if size > maxNotice {
		return fmt.Errorf("%w: a notice of %d bytes on the control stream", transport.ErrProtocol, size)
	}
	p := make([]byte, size)
	if _, err := io.ReadFull(r, p); err != nil {
		return err
	}
	select {
	case s.notices <- p:
	default: // only the first counts
	}
	return nil
}

// Notify sends p (cut to 4096 bytes) to the peer on the control stream,
// beside the ring, where a peer that is not reading the ring gets it (see
// transport.NoticeStream). It waits only for the socket to take it.
func (s *Stream) Notify(p []byte) error {
	p = p[:min(len(p), maxNotice)]
	msg := make([]byte, 3+len(p))
	msg[0] = noticeMark
	binary.LittleEndian.PutUint16(msg[1:], uint16(len(p)))
	copy(msg[3:], p)
	// One write: a bell rung meanwhile goes before or after it, not
	// inside (the socket's writes are serialised).
	_, err := s.control.Write(msg)
	return err
}

// Notices delivers the peer's notice, also after the stream has ended.
func (s *Stream) Notices() <-chan []byte { return s.notices }

func (s *Stream) nudgeBoth() {
	nudge(s.nudgeRead)
	nudge(s.nudgeWrite)
}

// nudge wakes whoever sleeps on ch, or the next to sleep on it.
func nudge(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// ring wakes the peer's reader (bell 0) or writer (bell 1) if it sleeps
// (said so in word, which it set to 1 before it looked at the ring a last
// time): a store of this side's position, then this load, against the
// sleeper's store of 1 and then its look, so that one of the two always
// sees the other.
func (s *Stream) ring(word *atomic.Uint32, bell int) {
	if word.Load() != 0 && word.CompareAndSwap(1, 0) {
		// A failed write means the peer is gone: the watcher will say so.
		_, _ = s.control.Write(bells[bell : bell+1])
	}
}

// acquire takes a reference on the mappings, unless the stream is closed
// and they are gone or going.
func (s *Stream) acquire() bool {
	for {
		n := s.refs.Load()
		if n <= 0 || s.closed.Load() {
			return false
		}
		if s.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (s *Stream) release() {
	if s.refs.Add(-1) == 0 {
		s.in.release()
		s.out.release()
	}
}

// Read reads what the peer has written, up to len(p) bytes, waiting for
// the first. After the peer is gone it returns what was still in the ring,
// then io.EOF.
func (s *Stream) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if !s.acquire() {
		return 0, transport.ErrClosed
	}
	defer s.release()
	n, err := s.await(&s.readDeadline)
	if err != nil {
		return 0, err
	}
	n = min(n, uint64(len(p)), publishBytes)
	s.in.copyOut(p[:n], s.head)
	s.head += n
	s.in.head.Store(s.head)
	s.ring(s.in.writerSleep, 1)
	return int(n), nil
}

// Write writes all of p, waiting for room in the ring as the peer reads.
func (s *Stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if !s.acquire() {
		return 0, transport.ErrClosed
	}
	defer s.release()
	done := 0
	for done < len(p) {
		n, err := s.await(&s.writeDeadline)
		if err != nil {
			return done, err
		}
		n = min(n, uint64(len(p)-done), publishBytes)
		s.out.copyIn(s.tail, p[done:done+int(n)])
		s.tail += n
		s.out.tail.Store(s.tail)
		s.ring(s.out.readerSleep, 0)
		done += int(n)
	}
	return done, nil
}

// TryWrite writes a and then b if the ring has room for both now, and
// reports whether it did: all or nothing, without waiting (see
// transport.Conn, which writes small frames so on the caller's goroutine).
func (s *Stream) TryWrite(a, b []byte) (bool, error) {
	if !s.wmu.TryLock() {
		return false, nil
	}
	defer s.wmu.Unlock()
	if !s.acquire() {
		return false, transport.ErrClosed
	}
	defer s.release()
	if s.gone.Load() {
		return false, errPeerGone
	}
	free, err := s.out.writable(s.tail)
	if err != nil {
		return false, err
	}
	n := uint64(len(a) + len(b))
	if n > free {
		return false, nil
	}
	s.out.copyIn(s.tail, a)
	s.out.copyIn(s.tail+uint64(len(a)), b)
	s.tail += n
	s.out.tail.Store(s.tail)
	s.ring(s.out.readerSleep, 0)
	return true, nil
}

// await waits until the ring has bytes to read (deadline is the read
// deadline) or room to write (the write deadline), and returns how many.
// It polls for up to the spin time, yielding, then sleeps until the other
// side rings, the stream is closed, the peer is gone or the deadline
// passes.
func (s *Stream) await(deadline *atomic.Int64) (uint64, error) {
	reading := deadline == &s.readDeadline
	var spinUntil time.Time
	for polls := 0; ; polls++ {
		gone := s.gone.Load() // before the ring: what the peer published before it left is seen
		if gone && !reading {
			return 0, errPeerGone // room in the ring nobody will read
		}
		n, err := s.available(reading)
		if n > 0 || err != nil {
			return n, err
		}
		switch {
		case s.closed.Load():
			return 0, transport.ErrClosed
		case gone:
			return 0, io.EOF
		}
		if s.spin > 0 && polls%16 != 15 && polls < spinPolls {
			// Between looks at the clock, which cost more than a poll (the
			// first is after 15 polls, by when most waits have ended).
			s.yield(polls)
			continue
		}
		now := time.Now()
		dl := deadline.Load()
		if dl != 0 && now.UnixNano() >= dl {
			return 0, os.ErrDeadlineExceeded
		}
		if spinUntil.IsZero() {
			spinUntil = now.Add(s.spin)
		}
		if now.Before(spinUntil) {
			s.yield(polls)
			continue
		}
		s.sleep(reading, dl, now)
	}
}

// yield lets others run between two polls: this process's goroutines
// (the peer's frame may be waiting for this rank's reader, or its sender)
// and, every few polls, other processes: where ranks outnumber cores, the
// peer this side waits for may be waiting for this core.
func (s *Stream) yield(polls int) {
	if polls%yieldEvery == yieldEvery-1 {
		osYield()
	}
	runtime.Gosched()
}

func (s *Stream) available(reading bool) (uint64, error) {
	if reading {
		return s.in.readable(s.head)
	}
	return s.out.writable(s.tail)
}

// sleep parks the side until the peer rings for it, a local event nudges
// it or the deadline passes, once it has said in the segment that it
// sleeps and found, looking again, that it still has to wait.
//
// Why not a futex in the segment: a goroutine in a futex system call holds
// its P (the runtime's right to run Go code) until the system monitor
// takes it back, 20 us to 10 ms later, and meanwhile no other goroutine of
// the process runs: with more ranks than cores, where each rank has one
// P, its readers starved each other. A parked goroutine gives its P up at
// once, and the bell arrives through the network poller.
func (s *Stream) sleep(reading bool, deadline int64, now time.Time) {
	word, ch, t := s.out.writerSleep, s.nudgeWrite, s.writeTimer
	if reading {
		word, ch, t = s.in.readerSleep, s.nudgeRead, s.readTimer
	}
	word.Store(1)
	if n, err := s.available(reading); n > 0 || err != nil || s.closed.Load() || s.gone.Load() {
		word.Store(0)
		return
	}
	d := maxSleep
	if deadline != 0 {
		d = min(d, time.Duration(deadline-now.UnixNano()))
	}
	if d > 0 {
		t.Reset(d)
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
	word.Store(0)
}

// Close closes the stream: waiting Reads and Writes return transport.ErrClosed,
// and the peer, its control stream closed, reads what was written and then
// io.EOF. The segments are unmapped once no Read or Write uses them.
func (s *Stream) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	s.nudgeBoth()
	err := s.control.Close()
	<-s.watched
	s.release()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// SetDeadline sets both deadlines.
func (s *Stream) SetDeadline(t time.Time) error {
	_ = s.SetReadDeadline(t)
	return s.SetWriteDeadline(t)
}

// SetReadDeadline bounds the waits of Reads (zero: no bound), including
// one waiting now.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.readDeadline.Store(unixNano(t))
	nudge(s.nudgeRead)
	return nil
}

// SetWriteDeadline bounds the waits of Writes (zero: no bound), including
// one waiting now.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.writeDeadline.Store(unixNano(t))
	nudge(s.nudgeWrite)
	return nil
}

// ReadBufferSize tells transport.Conn to give the stream no read buffer
// worth the name: a read costs no system call, and a buffer would copy
// every payload's first bytes twice.
func (s *Stream) ReadBufferSize() int { return 16 }

// RemoteAddr is the control stream's, for logs.
func (s *Stream) RemoteAddr() net.Addr {
	if a, ok := s.control.(interface{ RemoteAddr() net.Addr }); ok {
		return a.RemoteAddr()
	}
	return shmAddr{}
}

type shmAddr struct{}

func (shmAddr) Network() string { return "shm" }
func (shmAddr) String() string  { return "shm" }

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}
