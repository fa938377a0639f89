package ring

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/ringo-ml/ringo/internal/codec"
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/link"
)

// Compressed is a ring whose AllReduce sends its pieces through a codec: the
// same schedule as AllReduce, with every piece encoded before it is sent and
// decoded where it lands.
//
// Reduce-scatter: each hop decodes the partial sum from the left, adds its
// own values in the buffer's type (float32 for the lossy codecs) and encodes
// the result for the right. The owner of a chunk completes it, encodes it
// once, and rounds its own copy through the codec exactly as every other rank
// will decode it. Allgather: the encoded final pieces travel around the ring
// unchanged, each rank decoding them into its buffer. So every rank ends with
// bitwise-identical values; with a lossless codec they are the bits the
// uncompressed ring computes.
//
// A lossy codec's payload length follows from the element count, so its
// receives are posted ahead as AllReduce's are. A lossless codec's does not,
// and a receive must be posted with its frame's exact length: each payload
// is preceded by a small header frame (flag and length), and only one
// message is received ahead. On a link slow enough for compression to pay,
// the socket buffers, not the posted receives, keep the wire busy, provided
// the pieces are large (see minLosslessSegment).
//
// Like Ring, a Compressed must not be used by two calls at once.
type Compressed struct {
	r     *Ring // the ring's rank, links and pipeline, with the depth capped
	codec *codec.Codec

	send []slot // 2·Depth: pieces this rank encodes, by step parity and piece
	recv []slot // 2·Depth: pieces received, by step parity and piece
	tmp  []byte // one raw piece: values decoded and reduced before encoding
	hdr  []byte // the header frame received next
}

// slot is one piece's wire buffer, with the header that announces it and the
// ticket of the last send from it.
type slot struct {
	hdr    []byte
	buf    []byte
	ticket uint64
}

// maxCodecDepth caps the pipeline depth of a compressed ring. A rank has up
// to 4·Depth messages in flight to its right (its 2·Depth send slots and the
// 2·Depth received pieces it forwards), a lossless message is two frames,
// and the frames in flight must stay within the transport's queue
// (transport.LinkDepth, 64).
const maxCodecDepth = 8

// minLosslessSegment is the smallest piece a lossless codec's ring sends:
// each of its messages costs two frames and a receive that cannot be posted
// ahead, so pieces must be large for the wire to stay busy. On the 1 Gbit/s
// netns testbed (4 ranks on 2 shared CPUs, S2, 90%-zero rows), 64 KiB
// pieces gave 0.15-0.18 GB/s busbw, 256 KiB 0.25-0.31, 512 KiB 0.56-0.59,
// 1 MiB 0.45-0.67, 2 MiB 0.41-0.50.
const minLosslessSegment = 512 << 10

// ErrCodec: a codec that does not fit the call (a lossy codec on a vector
// that is not float32).
var ErrCodec = errors.New("ring: codec does not apply")

// Codec is a wire codec of a compressed ring. Its value is the one the
// codec travels as in a collective's signature (collective.Config.Compression).
type Codec uint8

// The codecs (the zero Codec sends values as they are). S2 and Zstd are lossless (github.com/klauspost/compress): a
// piece goes compressed only where that pays, and the result is bitwise the
// uncompressed ring's, for every element type and op. BF16 and FP16 are
// lossy, for float32 vectors: values cross the wire as bfloat16 or IEEE
// float16 (round to nearest even) and are accumulated in float32.
const (
	S2   = Codec(codec.S2)
	Zstd = Codec(codec.Zstd)
	BF16 = Codec(codec.BF16)
	FP16 = Codec(codec.FP16)
)

func (k Codec) String() string { return codec.Kind(k).String() }

// CodecStats counts what a compressed ring's encoder did. A lossy codec
// counts nothing.
type CodecStats struct {
	// Pieces tried with the codec, sent compressed, and sent raw without a
	// try (the back-off after incompressible ones).
	Tried, Compressed, Skipped int
	// RawBytes were encoded into WireBytes.
	RawBytes, WireBytes int64
}

// NewCompressed returns r's compressed twin using codec k. It shares r's
// links: calls on the two must not overlap. Close releases it.
//
// A lossless codec's pieces are at least 512 KiB (see minLosslessSegment),
// whatever r's SegmentBytes.
func NewCompressed(r *Ring, k Codec) (*Compressed, error) {
	return newCompressed(r, codec.Kind(k), minLosslessSegment)
}

// newCompressed is NewCompressed with the lossless pieces' floor given
// (tests want small pieces, to run many of them).
func newCompressed(r *Ring, k codec.Kind, floor int) (*Compressed, error) {
	c, err := codec.New(k)
	if err != nil {
		return nil, err
	}
	opt := r.opt
	opt.Depth = min(opt.Depth, maxCodecDepth)
	if k.Lossless() {
		opt.SegmentBytes = max(opt.SegmentBytes, floor)
	}
	return &Compressed{r: New(r.rank, r.size, r.left, r.right, opt), codec: c}, nil
}

// Codec is the codec in use.
func (c *Compressed) Codec() Codec { return Codec(c.codec.Kind()) }

// Stats are the encoder's counters since the last ResetStats.
func (c *Compressed) Stats() CodecStats {
	s := c.codec.Stats()
	return CodecStats{Tried: s.Tried, Compressed: s.Compressed, Skipped: s.Skipped, RawBytes: s.RawBytes, WireBytes: s.WireBytes}
}

// ResetStats zeroes the encoder's counters.
func (c *Compressed) ResetStats() { c.codec.ResetStats() }

// Close releases the codec's state.
func (c *Compressed) Close() { c.codec.Close() }

func (c *Compressed) scratch() {
	if c.send != nil {
		return
	}
	d, seg := c.r.opt.Depth, c.r.opt.SegmentBytes
	sendCap := (codec.MaxEncoded(seg) + 7) &^ 7
	words := make([]uint64, (2*d*sendCap+2*d*seg+seg)/8) // uint64 backing keeps every buffer 8-byte aligned
	all := unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), len(words)*8)
	hdrs := make([]byte, (4*d+1)*codec.HeaderSize)
	hdr := func(i int) []byte { return hdrs[i*codec.HeaderSize : (i+1)*codec.HeaderSize : (i+1)*codec.HeaderSize] }
	take := func(n int) []byte {
		b := all[:n:n]
		all = all[n:]
		return b
	}
	c.send = make([]slot, 2*d)
	c.recv = make([]slot, 2*d)
	for i := range c.send {
		c.send[i] = slot{hdr: hdr(i), buf: take(sendCap)}
	}
	for i := range c.recv {
		c.recv[i] = slot{hdr: hdr(2*d + i), buf: take(seg)}
	}
	c.tmp = take(seg)
	c.hdr = hdr(4 * d)
}

// AllReduceCompressed reduces buf across the ring in place, like AllReduce,
// sending every piece through c's codec. A lossy codec needs a float32 buf.
func AllReduceCompressed[T link.Elem](c *Compressed, buf []T, red link.Reducer[T]) error {
	r := c.r
	k := c.codec.Kind()
	if k.Lossy() && kernel.TypeOf[T]() != kernel.Float32 {
		return fmt.Errorf("%w: %v compresses float32 vectors, not %v", ErrCodec, k, kernel.TypeOf[T]())
	}
	if r.size == 1 {
		return nil
	}
	s := newSchedule[T](r, len(buf), 0, true, true)
	if s.n == 0 {
		return r.exchangeEmpty()
	}
	c.scratch()
	for i := range c.send {
		c.send[i].ticket, c.recv[i].ticket = 0, 0
	}
	x := zrunner[T]{c: c, s: s, buf: buf, red: red, kind: k, fixed: !k.Lossless(), esize: kernel.Size[T]()}
	return x.run()
}

// zrunner holds the state of one compressed allreduce.
type zrunner[T link.Elem] struct {
	c        *Compressed
	s        schedule
	buf      []T
	red      link.Reducer[T]
	kind     codec.Kind
	fixed    bool // payload lengths follow from the element count: receives are posted ahead
	esize    int
	lastSend uint64
}

func (x *zrunner[T]) run() error {
	s := &x.s
	if !x.fixed {
		if x.hasNext(0, 0, -1) {
			if err := x.postHeader(); err != nil {
				return err
			}
		}
	}
	// Fixed-length payloads are posted ahead as the plain ring's are;
	// lossless ones post their own, header first, as they consume.
	// The switch is written out here: a method value (x.do) or a call
	// through one moves x to the heap, an allocation per call.
	err := s.walk(x.fixed, func(m move, q, t, k int) error {
		switch m {
		case moveStartRound:
			return x.startRound(q)
		case movePost:
			return x.post(q, t, k)
		}
		return x.consume(q, t, k)
	})
	if err != nil {
		return err
	}
	return x.c.r.right.Flush(x.lastSend)
}

// hasNext reports whether a message follows piece k of step t of round q in
// the order the left neighbour sends them (round, step, piece; empty pieces
// are not sent). k = -1 asks about step t's first piece onwards.
func (x *zrunner[T]) hasNext(q, t, k int) bool {
	s := &x.s
	for {
		k++
		if k == s.depth {
			k, t = 0, t+1
			if t == s.steps {
				t, q = 0, q+1
				if q == s.rounds {
					return false
				}
			}
		}
		if lo, hi := s.piece(s.recvChunk(t), q, k); lo < hi {
			return true
		}
	}
}

// sendSlot is where the piece sent at step u goes: alternate steps use
// alternate halves, so that a piece is encoded while the one before is on
// the wire. recvSlot is the same for pieces received at step t.
func (x *zrunner[T]) sendSlot(u, k int) *slot { return &x.c.send[(u%2)*x.s.depth+k] }
func (x *zrunner[T]) recvSlot(t, k int) *slot { return &x.c.recv[(t%2)*x.s.depth+k] }

// startRound encodes and queues step 0 of round q: the rank's own pieces.
func (x *zrunner[T]) startRound(q int) error {
	s := &x.s
	c := s.sendChunk(0)
	for k := 0; k < s.depth; k++ {
		lo, hi := s.piece(c, q, k)
		if lo == hi {
			continue
		}
		if err := x.encodeSend(x.sendSlot(0, k), x.buf[lo:hi], false); err != nil {
			return err
		}
	}
	return nil
}

// post asks for piece k of step t of round q (fixed-length payloads).
func (x *zrunner[T]) post(q, t, k int) error {
	s := &x.s
	lo, hi := s.piece(s.recvChunk(t), q, k)
	if lo == hi {
		return nil
	}
	sl := x.recvSlot(t, k)
	if err := x.c.r.right.Flush(sl.ticket); err != nil { // still being forwarded from
		return err
	}
	return x.c.r.left.Post(sl.buf[:x.kind.WireSize(hi-lo)])
}

// postHeader asks for the header of the next lossless message.
func (x *zrunner[T]) postHeader() error { return x.c.r.left.Post(x.c.hdr) }

// receive completes the receive of piece [lo, hi) at step t: it returns the
// payload and its flag. A lossless payload is received after its header, and
// the next header is posted behind it; a raw allgather piece lands straight
// in the buffer (then the payload returned is that part of it).
func (x *zrunner[T]) receive(q, t, k, lo, hi int) ([]byte, codec.Flag, error) {
	l := x.c.r.left
	sl := x.recvSlot(t, k)
	if x.fixed {
		if err := l.Wait(); err != nil {
			return nil, 0, err
		}
		return sl.buf[:x.kind.WireSize(hi-lo)], codec.Compressed, nil
	}
	if err := l.Wait(); err != nil {
		return nil, 0, err
	}
	h, err := codec.ParseHeader(x.c.hdr, (hi-lo)*x.esize)
	if err != nil {
		return nil, 0, fmt.Errorf("ring: piece from rank %d: %w", mod(x.s.rank-1, x.s.size), err)
	}
	// The slot (its header too, for an allgather forward) may still be
	// on its way to the right from two steps ago.
	if err := x.c.r.right.Flush(sl.ticket); err != nil {
		return nil, 0, err
	}
	dst := sl.buf[:h.Len]
	if h.Flag == codec.Raw && !x.s.isRS(t) {
		dst = kernel.Bytes(x.buf[lo:hi])
	}
	if err := l.Post(dst); err != nil {
		return nil, 0, err
	}
	if x.hasNext(q, t, k) {
		if err := x.postHeader(); err != nil {
			return nil, 0, err
		}
	}
	if err := l.Wait(); err != nil {
		return nil, 0, err
	}
	return dst, h.Flag, nil
}

// decode makes the values of a received payload available as n elements:
// in place for a raw payload, else in dst.
func (x *zrunner[T]) decode(dst []T, payload []byte, flag codec.Flag) ([]T, error) {
	switch {
	case x.kind.Lossy():
		codec.DecodeF32(x.kind, f32(dst), payload)
		return dst, nil
	case flag == codec.Raw:
		return kernel.FromBytes[T](payload), nil
	}
	if err := x.c.codec.Decompress(kernel.Bytes(dst), payload); err != nil {
		return nil, fmt.Errorf("ring: piece from rank %d: %w", mod(x.s.rank-1, x.s.size), err)
	}
	return dst, nil
}

// consume completes piece k of step t of round q and forwards what it must.
func (x *zrunner[T]) consume(q, t, k int) error {
	s := &x.s
	lo, hi := s.piece(s.recvChunk(t), q, k)
	if lo == hi {
		return nil
	}
	payload, flag, err := x.receive(q, t, k, lo, hi)
	if err != nil {
		return err
	}
	n := hi - lo
	tmp := kernel.FromBytes[T](x.c.tmp[:n*x.esize])
	switch {
	case s.isRS(t) && t < s.size-2: // recvReduceSend
		in, err := x.decode(tmp, payload, flag)
		if err != nil {
			return err
		}
		x.red.ReduceTo(tmp, in, x.buf[lo:hi])
		return x.encodeSend(x.sendSlot(t+1, k), tmp, false)
	case s.isRS(t): // recvReduceCopySend: the rank's own chunk is complete
		in, err := x.decode(tmp, payload, flag)
		if err != nil {
			return err
		}
		out := x.buf[lo:hi]
		x.red.ReduceTo(out, x.buf[lo:hi], in)
		if x.red.Div != nil {
			x.red.Div(out, s.size)
		}
		return x.encodeSend(x.sendSlot(t+1, k), out, true)
	}
	// Allgather: the piece is final; decode it into place and pass its
	// bytes on unchanged (recvCopySend), or only land it (recv).
	out := x.buf[lo:hi]
	if x.fixed || flag == codec.Compressed {
		if _, err := x.decode(out, payload, flag); err != nil {
			return err
		}
	}
	if t == s.steps-1 {
		return nil
	}
	sl := x.recvSlot(t, k)
	if err := x.sendMessage(sl, payload, flag); err != nil {
		return err
	}
	sl.ticket = x.lastSend
	return nil
}

// encodeSend encodes v into sl and queues it. final says v is the rank's
// completed chunk: a lossy codec then rounds v to what the other ranks will
// decode, and a raw piece may go straight from v (it no longer changes).
func (x *zrunner[T]) encodeSend(sl *slot, v []T, final bool) error {
	if err := x.c.r.right.Flush(sl.ticket); err != nil {
		return err
	}
	var payload []byte
	flag := codec.Compressed
	if x.kind.Lossy() {
		payload = sl.buf[:x.kind.WireSize(len(v))]
		codec.EncodeF32(x.kind, payload, f32(v))
		if final {
			codec.DecodeF32(x.kind, f32(v), payload)
		}
	} else {
		raw := kernel.Bytes(v)
		payload, flag = x.c.codec.Compress(sl.buf, raw)
		if flag == codec.Raw && !final {
			payload = sl.buf[:len(raw)]
			copy(payload, raw)
		}
	}
	if err := x.sendMessage(sl, payload, flag); err != nil {
		return err
	}
	sl.ticket = x.lastSend
	return nil
}

// sendMessage queues a payload, behind its header for a lossless codec.
func (x *zrunner[T]) sendMessage(sl *slot, payload []byte, flag codec.Flag) error {
	right := x.c.r.right
	if !x.fixed {
		codec.Header{Flag: flag, Len: len(payload)}.Put(sl.hdr)
		if _, err := right.Send(sl.hdr); err != nil {
			return err
		}
	}
	t, err := right.Send(payload)
	x.lastSend = t
	return err
}

// f32 views a float32 vector, known to be one, as []float32.
func f32[T link.Elem](v []T) []float32 {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(v))), len(v))
}
