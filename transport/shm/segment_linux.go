package shm

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ringo-ml/ringo/transport"
)

// A segment is one direction of a link: a header and a byte ring, in
// memory both processes map. Layout (little-endian; each word the two sides
// write on a cache line of its own, so that publishing one does not steal
// the line the other side polls):
//
//	0     magic "RINGOSHM"
//	8     version (uint32)
//	12    capacity of the ring in bytes (uint32, a power of two)
//	64    tail: bytes the writer has published (uint64, the writer's)
//	128   head: bytes the reader has consumed (uint64, the reader's)
//	192   readerSleeping (uint32): 1 while the reader sleeps (ring its bell)
//	256   writerSleeping (uint32): 1 while the writer sleeps
//	4096  the ring: byte i of the stream is at 4096 + i mod capacity
//
// Every word is in memory the peer can write. Each side keeps its own
// position in process memory and only publishes it; the peer's is read
// and checked (see readable, writable) before it is used.
const (
	segmentMagic   = "RINGOSHM"
	segmentVersion = 1
	offVersion     = 8
	offCapacity    = 12
	offTail        = 64
	offHead        = 128
	offReaderSleep = 192
	offWriterSleep = 256
	dataOffset     = 4096
)

// segmentDir is where segments are created: POSIX shared memory on Linux.
const segmentDir = "/dev/shm"

// segmentPrefix starts every segment's name; the creator's process id and
// 32 hex digits (128 random bits) follow: the pid says whose a segment is
// (should one be left behind), the random bits make it unguessable.
const segmentPrefix = "ringo-"

var segmentName = regexp.MustCompile(`^ringo-[0-9]{1,10}-[0-9a-f]{32}$`)

type segment struct {
	mem      []byte
	data     []byte
	capacity uint64 // validated: a power of two, len(data)
	mask     uint64

	tail        *atomic.Uint64
	head        *atomic.Uint64
	readerSleep *atomic.Uint32
	writerSleep *atomic.Uint32

	unmap func() // nil for memory the garbage collector owns (tests)
}

// over makes a segment of mem, whose header says its capacity. It checks
// the header (the peer wrote it) against mem's size.
func over(mem []byte) (*segment, error) {
	if len(mem) < dataOffset+MinSegmentBytes {
		return nil, fmt.Errorf("%w: shared memory segment of %d bytes is too short", transport.ErrProtocol, len(mem))
	}
	if string(mem[:8]) != segmentMagic {
		return nil, fmt.Errorf("%w: shared memory segment has no ringo header", transport.ErrProtocol)
	}
	if v := binary.LittleEndian.Uint32(mem[offVersion:]); v != segmentVersion {
		return nil, fmt.Errorf("%w: shared memory segment version %d, this side speaks %d", transport.ErrProtocol, v, segmentVersion)
	}
	c := uint64(binary.LittleEndian.Uint32(mem[offCapacity:]))
	if c < MinSegmentBytes || c > MaxSegmentBytes || c&(c-1) != 0 || uint64(len(mem)-dataOffset) != c {
		return nil, fmt.Errorf("%w: shared memory segment of %d bytes announces a ring of %d", transport.ErrProtocol, len(mem), c)
	}
	return &segment{
		mem:         mem,
		data:        mem[dataOffset : dataOffset+c : dataOffset+c],
		capacity:    c,
		mask:        c - 1,
		tail:        (*atomic.Uint64)(unsafe.Pointer(&mem[offTail])),
		head:        (*atomic.Uint64)(unsafe.Pointer(&mem[offHead])),
		readerSleep: (*atomic.Uint32)(unsafe.Pointer(&mem[offReaderSleep])),
		writerSleep: (*atomic.Uint32)(unsafe.Pointer(&mem[offWriterSleep])),
	}, nil
}

// initHeader writes the header of a fresh segment of ring capacity c.
func initHeader(mem []byte, c int) {
	copy(mem, segmentMagic)
	binary.LittleEndian.PutUint32(mem[offVersion:], segmentVersion)
	binary.LittleEndian.PutUint32(mem[offCapacity:], uint32(c))
}

// validCapacity reports whether c is a ring capacity segments may have.
func validCapacity(c int) bool {
	return c >= MinSegmentBytes && c <= MaxSegmentBytes && c&(c-1) == 0
}

// createSegment creates and maps a fresh segment with a ring of capacity
// bytes under a random name in dir: O_EXCL and O_NOFOLLOW, so that nothing
// planted under the name (a file, a link) is ever used, and mode 0600.
// The caller unlinks it once the peer has mapped it.
func createSegment(dir string, capacity int) (*segment, string, error) {
	if !validCapacity(capacity) {
		return nil, "", fmt.Errorf("shm: ring capacity %d is not a power of two in [%d, %d]", capacity, MinSegmentBytes, MaxSegmentBytes)
	}
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, "", fmt.Errorf("shm: segment name: %w", err)
	}
	name := fmt.Sprintf("%s%d-%s", segmentPrefix, os.Getpid(), hex.EncodeToString(rnd[:]))
	path := filepath.Join(dir, name)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("shm: creating %s: %w", path, err)
	}
	defer unix.Close(fd)
	seg, err := mapFresh(fd, capacity)
	if err != nil {
		_ = unix.Unlink(path)
		return nil, "", fmt.Errorf("shm: %s: %w", path, err)
	}
	return seg, name, nil
}

func mapFresh(fd, capacity int) (*segment, error) {
	// The umask may only have taken bits away; make sure of exactly 0600.
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return nil, err
	}
	size := dataOffset + capacity
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	initHeader(mem, capacity)
	seg, err := over(mem)
	if err != nil {
		_ = unix.Munmap(mem)
		return nil, err
	}
	seg.unmap = func() { _ = unix.Munmap(mem) }
	return seg, nil
}

// openSegment maps the segment the peer created under name in dir. The
// name must be one createSegment makes (no path can be smuggled in), and
// the file a regular file of this user that nobody else may open (mode
// 0600 or less) with a valid header.
func openSegment(dir, name string) (*segment, error) {
	if !segmentName.MatchString(name) {
		return nil, fmt.Errorf("%w: %q is not a segment name", transport.ErrProtocol, name)
	}
	path := filepath.Join(dir, name)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("shm: the peer's segment %s does not exist: is the peer on another host (another /dev/shm)? %w", path, err)
		}
		return nil, fmt.Errorf("shm: opening %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("shm: %s: %w", path, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return nil, fmt.Errorf("%w: %s is not a regular file", transport.ErrProtocol, path)
	case st.Uid != uint32(os.Geteuid()):
		return nil, fmt.Errorf("%w: %s belongs to user %d, not to this process's user %d", transport.ErrProtocol, path, st.Uid, os.Geteuid())
	case st.Mode&0o077 != 0:
		return nil, fmt.Errorf("%w: %s has mode %#o: others could open it", transport.ErrProtocol, path, st.Mode&0o777)
	case st.Size < dataOffset+MinSegmentBytes || st.Size > dataOffset+MaxSegmentBytes:
		return nil, fmt.Errorf("%w: %s has %d bytes", transport.ErrProtocol, path, st.Size)
	}
	mem, err := unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("shm: mapping %s: %w", path, err)
	}
	seg, err := over(mem)
	if err != nil {
		_ = unix.Munmap(mem)
		return nil, err
	}
	seg.unmap = func() { _ = unix.Munmap(mem) }
	return seg, nil
}

// unlinkSegment removes name from dir; a name already gone is fine (the
// other side removed it).
func unlinkSegment(dir, name string) error {
	err := unix.Unlink(filepath.Join(dir, name))
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("shm: removing %s: %w", name, err)
	}
	return nil
}

func (g *segment) release() {
	if g.unmap != nil {
		g.unmap()
	}
}

// errCorrupt reports a peer position this side cannot have reached.
func errCorrupt(what string, got, own, capacity uint64) error {
	return fmt.Errorf("%w: shared memory ring: the peer's %s is %d, %d bytes from this side's %d in a ring of %d", transport.ErrProtocol, what, got, int64(got-own), own, capacity)
}

// readable is how many bytes the writer has published past head (this
// side's read position). A tail behind head, or more than a ring ahead of
// it, is corruption.
func (g *segment) readable(head uint64) (uint64, error) {
	tail := g.tail.Load()
	if n := tail - head; n <= g.capacity {
		return n, nil
	}
	return 0, errCorrupt("tail", tail, head, g.capacity)
}

// writable is how many bytes may be written past tail (this side's write
// position) before the reader's head is overrun.
func (g *segment) writable(tail uint64) (uint64, error) {
	head := g.head.Load()
	if used := tail - head; used <= g.capacity {
		return g.capacity - used, nil
	}
	return 0, errCorrupt("head", head, tail, g.capacity)
}

// copyOut copies len(dst) bytes of the stream from position pos (which
// readable has vouched for) into dst.
func (g *segment) copyOut(dst []byte, pos uint64) {
	n := copy(dst, g.data[pos&g.mask:])
	copy(dst[n:], g.data)
}

// copyIn copies src into the ring at stream position pos.
func (g *segment) copyIn(pos uint64, src []byte) {
	n := copy(g.data[pos&g.mask:], src)
	copy(g.data, src[n:])
}
