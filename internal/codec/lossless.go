package codec

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// HeaderSize is the size of the header frame that goes before every payload
// of a lossless codec: its length is not known to the receiver in advance,
// and a receive must be posted with the exact length of its frame.
const HeaderSize = 8

// Flag says how a lossless payload is encoded.
type Flag uint8

// The payload flags.
const (
	Raw        Flag = 1 // the segment's bytes as they are
	Compressed Flag = 2 // the codec's output
)

// Header describes the payload frame that follows it.
type Header struct {
	Flag Flag
	Len  int // payload bytes
}

// Put writes h into b (HeaderSize bytes): flag, three zero bytes, and the
// length as a little-endian uint32.
func (h Header) Put(b []byte) {
	b = b[:HeaderSize]
	b[0], b[1], b[2], b[3] = byte(h.Flag), 0, 0, 0
	binary.LittleEndian.PutUint32(b[4:], uint32(h.Len))
}

// ParseHeader reads the header in b and checks it against the segment it
// announces, of raw bytes: a raw payload is exactly raw bytes, a compressed
// one is shorter (a sender never sends a compression that does not pay).
// The length is checked before anything is received into a buffer of it.
func ParseHeader(b []byte, raw int) (Header, error) {
	if len(b) != HeaderSize || b[1]|b[2]|b[3] != 0 {
		return Header{}, fmt.Errorf("%w: bad header", ErrCorrupt)
	}
	h := Header{Flag: Flag(b[0]), Len: int(binary.LittleEndian.Uint32(b[4:]))}
	switch {
	case h.Flag == Raw && h.Len == raw:
	case h.Flag == Compressed && h.Len < raw:
	default:
		return Header{}, fmt.Errorf("%w: header says flag %d, %d bytes, for a segment of %d bytes", ErrCorrupt, h.Flag, h.Len, raw)
	}
	return h, nil
}

// Back-off: after a segment that does not compress enough, the encoder sends
// the next ones raw without trying, for a number of segments that doubles
// with each failed try up to maxSkip, and starts over at the first success.
// Incompressible data thus costs a try every maxSkip segments, and data whose
// compressibility changes is tried again within maxSkip segments.
const (
	maxSkip = 32
	// A compression pays when it saves at least 1/payShift of the bytes:
	// less is not worth the receiver's decoding time.
	payShift = 8
)

// Codec is one ring's codec state: zstd's encoder and decoder (made once:
// they are expensive), and the sender's back-off.
type Codec struct {
	kind Kind
	zenc *zstd.Encoder
	zdec *zstd.Decoder

	skip, wait int // segments still to send without trying; the next wait
	stats      Stats
}

// Stats counts what an encoder did, for tests and benchmarks.
type Stats struct {
	Tried, Compressed, Skipped int // segments
	RawBytes, WireBytes        int64
}

// New returns the codec state for k (for None and the lossy codecs, only the
// kind: they keep no state).
func New(k Kind) (*Codec, error) {
	if !k.Valid() {
		return nil, fmt.Errorf("%w %v", ErrUnknown, k)
	}
	c := &Codec{kind: k}
	if k == Zstd {
		var err error
		// One goroutine-free encoder and decoder: every call encodes or
		// decodes a whole segment (EncodeAll/DecodeAll) on the caller's
		// goroutine. CRCs are off: the transport delivers bytes intact or
		// fails the link.
		c.zenc, err = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(false),
			zstd.WithLowerEncoderMem(true))
		if err != nil {
			return nil, fmt.Errorf("codec: zstd encoder: %w", err)
		}
		c.zdec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1),
			zstd.WithDecodeAllCapLimit(true), zstd.IgnoreChecksum(true))
		if err != nil {
			c.zenc.Close()
			return nil, fmt.Errorf("codec: zstd decoder: %w", err)
		}
	}
	return c, nil
}

// Kind is the codec's kind.
func (c *Codec) Kind() Kind { return c.kind }

// Close releases zstd's state.
func (c *Codec) Close() {
	if c.zenc != nil {
		_ = c.zenc.Close()
		c.zenc = nil
	}
	if c.zdec != nil {
		c.zdec.Close()
		c.zdec = nil
	}
}

// Stats returns the encoder's counters.
func (c *Codec) Stats() Stats { return c.stats }

// ResetStats zeroes the encoder's counters.
func (c *Codec) ResetStats() { c.stats = Stats{} }

// MaxEncoded is the capacity a destination of Compress needs for raw bytes
// of input, so that encoding never allocates.
func MaxEncoded(raw int) int {
	return 1 + max(s2.MaxEncodedLen(raw), raw+raw/64+1024)
}

// A Compressed payload starts with the method that made it.
const (
	methodCodec  byte = 0 // S2 or zstd, by the codec's kind
	methodSparse byte = 1 // a bitmap of the non-zero 32-bit words, then those words
)

// Gradients are often mostly zeros scattered one value at a time, which S2
// finds slowly (it looks for repeats) and compresses only so far: a
// bitmap of the non-zero 32-bit words, followed by those words, is made and
// undone at memory speed and shrinks a segment of 90% zeros eightfold. It
// is tried first; S2 or zstd when it saves less than half.
const sparseMaxShare = 2 // the sparse form must be at most 1/2 of the segment

// b2u is 1 for true: the compiler makes it a flag move, so the loops below
// do not branch on data.
func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// encodeSparse writes src's sparse form into dst (capacity MaxEncoded) in
// one pass, 8 words (one bitmap byte) at a time, and returns it; nil if it
// would exceed len(src)/sparseMaxShare.
func encodeSparse(dst, src []byte) []byte {
	words := len(src) / 4
	bmLen := (words + 7) / 8
	out := dst[:cap(dst)]
	out[0] = methodSparse
	bitmap := out[1 : 1+bmLen]
	packed := out[1+bmLen:]
	limit := len(src)/sparseMaxShare - 1 - bmLen - len(src)%4 // packed bytes allowed
	p := 0
	for g := range words / 8 {
		s := src[32*g : 32*g+32]
		if binary.LittleEndian.Uint64(s)|binary.LittleEndian.Uint64(s[8:])|
			binary.LittleEndian.Uint64(s[16:])|binary.LittleEndian.Uint64(s[24:]) == 0 {
			bitmap[g] = 0
			continue
		}
		if p > limit {
			return nil
		}
		var m uint32
		for j := range 8 {
			v := binary.LittleEndian.Uint32(s[4*j:])
			binary.LittleEndian.PutUint32(packed[p:], v) // kept only if v != 0
			nz := b2u(v != 0)
			m |= nz << j
			p += int(4 * nz)
		}
		bitmap[g] = byte(m)
	}
	if words%8 != 0 {
		var m uint32
		for w := words &^ 7; w < words; w++ {
			v := binary.LittleEndian.Uint32(src[4*w:])
			if v != 0 {
				m |= 1 << (w % 8)
				binary.LittleEndian.PutUint32(packed[p:], v)
				p += 4
			}
		}
		bitmap[bmLen-1] = byte(m)
	}
	if p > limit {
		return nil
	}
	p += copy(packed[p:], src[4*words:])
	return out[:1+bmLen+p]
}

// decodeSparse undoes encodeSparse into dst, checking every length first.
func decodeSparse(dst, in []byte) error {
	words := len(dst) / 4
	bm := (words + 7) / 8
	if len(in) < bm {
		return fmt.Errorf("%w: sparse bitmap cut short", ErrCorrupt)
	}
	bitmap, packed := in[:bm], in[bm:]
	ones := 0
	for _, b := range bitmap {
		ones += bits.OnesCount8(b)
	}
	if words%8 != 0 && bitmap[bm-1]>>(words%8) != 0 {
		return fmt.Errorf("%w: sparse bitmap marks words past the segment", ErrCorrupt)
	}
	if len(packed) != 4*ones+len(dst)%4 {
		return fmt.Errorf("%w: sparse payload of %d bytes for %d words and %d tail bytes", ErrCorrupt, len(packed), ones, len(dst)%4)
	}
	p := 0
	for g := range words / 8 {
		d := dst[32*g : 32*g+32]
		m := uint32(bitmap[g])
		if m == 0 {
			clear(d)
			continue
		}
		if p+32 <= len(packed) {
			// Room to read 8 words: take each, masked to 0 if absent.
			for j := range 8 {
				bit := m >> j & 1
				v := binary.LittleEndian.Uint32(packed[p:]) & -bit
				binary.LittleEndian.PutUint32(d[4*j:], v)
				p += int(4 * bit)
			}
			continue
		}
		for j := range 8 {
			var v uint32
			if m>>j&1 != 0 {
				v = binary.LittleEndian.Uint32(packed[p:])
				p += 4
			}
			binary.LittleEndian.PutUint32(d[4*j:], v)
		}
	}
	for w := words &^ 7; w < words; w++ {
		var v uint32
		if bitmap[w/8]>>(w%8)&1 != 0 {
			v = binary.LittleEndian.Uint32(packed[p:])
			p += 4
		}
		binary.LittleEndian.PutUint32(dst[4*w:], v)
	}
	copy(dst[4*words:], packed[p:])
	return nil
}

// Compress encodes src for the wire. It returns the payload and its flag:
// the compressed bytes (in dst, which should have MaxEncoded(len(src))
// capacity) when they save enough, else src itself with the flag Raw, at
// once when the back-off says not to try.
func (c *Codec) Compress(dst, src []byte) ([]byte, Flag) {
	c.stats.RawBytes += int64(len(src))
	if !c.kind.Lossless() || len(src) < 64 {
		c.stats.WireBytes += int64(len(src))
		return src, Raw
	}
	if c.skip > 0 {
		c.skip--
		c.stats.Skipped++
		c.stats.WireBytes += int64(len(src))
		return src, Raw
	}
	c.stats.Tried++
	var out []byte
	if out = encodeSparse(dst, src); out == nil {
		dst = dst[:cap(dst)]
		dst[0] = methodCodec
		if c.kind == S2 {
			out = s2.Encode(dst[1:], src)
		} else {
			out = c.zenc.EncodeAll(src, dst[1:1])
		}
		out = dst[:1+len(out)]
	}
	if len(out) > len(src)-len(src)/payShift {
		c.wait = min(max(1, 2*c.wait), maxSkip)
		c.skip = c.wait
		c.stats.WireBytes += int64(len(src))
		return src, Raw
	}
	c.wait = 0
	c.stats.Compressed++
	c.stats.WireBytes += int64(len(out))
	return out, Compressed
}

// Decompress decodes a Compressed payload into dst, which must come out
// exactly full.
func (c *Codec) Decompress(dst, payload []byte) error {
	if len(payload) == 0 {
		return fmt.Errorf("%w: empty payload", ErrCorrupt)
	}
	method := payload[0]
	payload = payload[1:]
	switch {
	case method == methodSparse && c.kind.Lossless():
		return decodeSparse(dst, payload)
	case method != methodCodec:
		return fmt.Errorf("%w: unknown method %d", ErrCorrupt, method)
	}
	switch c.kind {
	case S2:
		n, err := s2.DecodedLen(payload)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		if n != len(dst) {
			return fmt.Errorf("%w: %d bytes decoded, %d expected", ErrCorrupt, n, len(dst))
		}
		if _, err := s2.Decode(dst, payload); err != nil {
			return fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		return nil
	case Zstd:
		out, err := c.zdec.DecodeAll(payload, dst[:0:len(dst)])
		if err != nil {
			return fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		if len(out) != len(dst) {
			return fmt.Errorf("%w: %d bytes decoded, %d expected", ErrCorrupt, len(out), len(dst))
		}
		return nil
	}
	return fmt.Errorf("%w: %v does not compress", ErrCorrupt, c.kind)
}
