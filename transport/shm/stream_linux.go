package shm

import (
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

// spinPolls bounds the polls between looks at the clock: past it, each
// poll looks (and soon sleeps), so that a spin of a few microseconds stays
// one even where a yield takes long.
const spinPolls = 1 << 12

// maxSleep bounds one futex sleep. Every wake-up a sleeper needs is sent
// (see wake), so it only matters if a peer misbehaves: a sleeper then
// still looks again now and then instead of never.
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

	closed        atomic.Bool
	refs          atomic.Int32 // the mappings live while refs > 0
	readDeadline  atomic.Int64 // unix nanoseconds; 0: none
	writeDeadline atomic.Int64
}

var _ transport.Stream = (*Stream)(nil)

// newStream starts a stream over the two segments; it owns them and
// control from now on.
func newStream(in, out *segment, control transport.Stream, opt Options) *Stream {
	s := &Stream{in: in, out: out, spin: opt.Spin, control: control, watched: make(chan struct{})}
	s.refs.Store(1)
	go s.watch()
	return s
}

// watch reads the control stream until it ends. The peer sends nothing
// on it after the setup: it ends because the peer closed its stream or
// exited (the kernel closes a killed process's sockets), or because this
// side closed it.
func (s *Stream) watch() {
	defer close(s.watched)
	var b [1]byte
	_, _ = s.control.Read(b[:])
	s.gone.Store(true)
	s.wakeBoth()
}

func (s *Stream) wakeBoth() {
	wake(s.in.readerSleep)
	wake(s.out.writerSleep)
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
		return 0, net.ErrClosed
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
	wake(s.in.writerSleep)
	return int(n), nil
}

// Write writes all of p, waiting for room in the ring as the peer reads.
func (s *Stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if !s.acquire() {
		return 0, net.ErrClosed
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
		wake(s.out.readerSleep)
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
		return false, net.ErrClosed
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
	wake(s.out.readerSleep)
	return true, nil
}

// await waits until the ring has bytes to read (deadline is the read
// deadline) or room to write (the write deadline), and returns how many.
// It polls for up to the spin time, yielding to the process's other
// goroutines, then sleeps on the side's futex until the other side wakes
// it, the stream is closed, the peer is gone or the deadline passes.
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
			return 0, net.ErrClosed
		case gone:
			return 0, io.EOF
		}
		if s.spin > 0 && polls%16 != 15 && polls < spinPolls {
			// Between looks at the clock, which cost more than a poll (the
			// first is after 15 polls, by when most waits have ended).
			runtime.Gosched()
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
			runtime.Gosched()
			continue
		}
		s.sleep(reading, dl, now)
	}
}

func (s *Stream) available(reading bool) (uint64, error) {
	if reading {
		return s.in.readable(s.head)
	}
	return s.out.writable(s.tail)
}

// sleep sleeps on the side's futex word once it has said so there and
// found, looking again, that it still has to wait.
func (s *Stream) sleep(reading bool, deadline int64, now time.Time) {
	word := s.out.writerSleep
	if reading {
		word = s.in.readerSleep
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
		futexWait(word, 1, d)
	}
	word.Store(0)
}

// Close closes the stream: waiting Reads and Writes return net.ErrClosed,
// and the peer, its control stream closed, reads what was written and then
// io.EOF. The segments are unmapped once no Read or Write uses them.
func (s *Stream) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	s.wakeBoth()
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
	s.wakeIfOpen(s.in.readerSleep)
	return nil
}

// SetWriteDeadline bounds the waits of Writes (zero: no bound), including
// one waiting now.
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.writeDeadline.Store(unixNano(t))
	s.wakeIfOpen(s.out.writerSleep)
	return nil
}

// wakeIfOpen wakes this side's sleeper on word to look at a new deadline,
// unless the stream is closed (its mappings may be gone).
func (s *Stream) wakeIfOpen(word *atomic.Uint32) {
	if s.acquire() {
		wake(word)
		s.release()
	}
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
