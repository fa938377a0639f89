package codec

import (
	"encoding/binary"
	"fmt"

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
	return max(s2.MaxEncodedLen(raw), raw+raw/64+1024)
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
	if c.kind == S2 {
		out = s2.Encode(dst[:cap(dst)], src)
	} else {
		out = c.zenc.EncodeAll(src, dst[:0])
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
