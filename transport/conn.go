package transport

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Stream is the byte stream a Conn frames: a net.Conn, or a stream of another
// transport that can time out writes.
type Stream interface {
	io.ReadWriteCloser
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
}

// readBufferSize is small on purpose: it lets a header and a small payload
// arrive in one read, while a large payload is read straight into the
// destination (bufio reads directly once its buffer is drained).
const readBufferSize = 4096

// Conn writes and reads frames on a Stream. Writes are serialised by a mutex so
// that frames never interleave; reads are meant for one goroutine.
type Conn struct {
	s Stream
	r *bufio.Reader
	// try is s's way of writing without waiting, if it has one; canTry
	// says so.
	try    tryWriter
	canTry bool
	// notes is s if it can carry a notice beside its bytes, else nil.
	notes NoticeStream

	wmu  sync.Mutex
	whdr [HeaderSize]byte
	iov  [2][]byte
	bufs net.Buffers

	rhdr [HeaderSize]byte
}

// NewConn frames s. A stream whose reads cost no system call (shared
// memory) may ask for a smaller read buffer with a method ReadBufferSize()
// int: a buffer saves a large payload no system call there, and costs a
// second copy of its first bytes.
func NewConn(s Stream) *Conn {
	size := readBufferSize
	if b, ok := s.(interface{ ReadBufferSize() int }); ok {
		size = b.ReadBufferSize()
	}
	c := &Conn{s: s, r: bufio.NewReaderSize(s, size)}
	c.try, c.canTry = s.(tryWriter)
	c.notes, _ = s.(NoticeStream)
	return c
}

// notices delivers the peer's notice beside the stream (nil: the stream
// carries none, and a receive from it never completes).
func (c *Conn) notices() <-chan []byte {
	if c.notes == nil {
		return nil
	}
	return c.notes.Notices()
}

// tryWriter is a Stream that can write without waiting when it has room
// (a shared-memory ring): a Link then writes small frames on its caller's
// goroutine instead of handing them to its sender.
type tryWriter interface {
	// TryWrite writes a and then b if there is room for both now, and
	// reports whether it did; it never waits, and writes all or nothing.
	TryWrite(a, b []byte) (bool, error)
}

// tryWriteLocked writes a frame if the stream can take it at once (see
// tryWriter); c.wmu is held.
func (c *Conn) tryWriteLocked(h *Header, payload []byte) (bool, error) {
	h.Len = uint32(len(payload))
	h.Encode(&c.whdr)
	return c.try.TryWrite(c.whdr[:], payload)
}

// WriteFrame writes h followed by payload with one vectored write. It sets
// h.Len from len(payload).
func (c *Conn) WriteFrame(h *Header, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("transport: payload of %d bytes exceeds the frame limit %d", len(payload), MaxPayload)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(h, payload)
}

func (c *Conn) writeLocked(h *Header, payload []byte) error {
	h.Len = uint32(len(payload))
	h.Encode(&c.whdr)
	if len(payload) == 0 {
		_, err := c.s.Write(c.whdr[:])
		return err
	}
	c.iov[0], c.iov[1] = c.whdr[:], payload
	c.bufs = c.iov[:]
	_, err := c.bufs.WriteTo(c.s)
	c.iov[1] = nil // do not keep the caller's buffer alive
	return err
}

// TryWriteControl writes a control frame between other frames, giving up
// after timeout: it waits for a write in progress to end (a frame in flight
// usually ends within milliseconds) but never behind a stuck one. It reports
// whether the frame was written. It is for best-effort notices (abort).
func (c *Conn) TryWriteControl(h *Header, payload []byte, timeout time.Duration) bool {
	if len(payload) > maxControlPayload {
		payload = payload[:maxControlPayload]
	}
	deadline := time.Now().Add(timeout)
	for !c.wmu.TryLock() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond) // a write in progress: let it finish
	}
	defer c.wmu.Unlock()
	_ = c.s.SetWriteDeadline(deadline)
	err := c.writeLocked(h, payload)
	_ = c.s.SetWriteDeadline(time.Time{})
	return err == nil
}

// SetReadDeadline bounds the reads that follow (zero: no bound).
func (c *Conn) SetReadDeadline(t time.Time) error { return c.s.SetReadDeadline(t) }

// ReadHeader reads and validates the next frame header.
func (c *Conn) ReadHeader(h *Header) error {
	if _, err := io.ReadFull(c.r, c.rhdr[:]); err != nil {
		return err
	}
	return h.Decode(&c.rhdr)
}

// ReadPayload reads exactly len(dst) payload bytes into dst.
func (c *Conn) ReadPayload(dst []byte) error {
	_, err := io.ReadFull(c.r, dst)
	return err
}

// discardPayload reads past a payload of n bytes.
func (c *Conn) discardPayload(n int) error {
	_, err := c.r.Discard(n)
	return err
}

// Close closes the underlying stream, unblocking any reader and writer.
func (c *Conn) Close() error { return c.s.Close() }

// Stream returns the underlying stream.
func (c *Conn) Stream() Stream { return c.s }
