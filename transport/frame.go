package transport

import (
	"encoding/binary"
	"fmt"
)

// HeaderSize is the size of the fixed frame header on the wire.
const HeaderSize = 40

// MaxPayload bounds the payload of any frame. A header announcing more is a
// protocol error, whatever buffer was posted.
const MaxPayload = 64 << 20

// maxControlPayload bounds the payload of an abort frame (its reason). The
// other control frames (bye, heartbeat, probe) carry none.
const maxControlPayload = 4096

const (
	frameMagic   = 0x5247 // "RG"
	frameVersion = 1
)

// FrameType says what a frame carries.
type FrameType uint8

// Frame types.
const (
	// Data carries (part of) an operation's payload.
	Data FrameType = iota + 1
	// Abort tells the peer the communicator failed; the payload is the reason.
	Abort
	// Bye says the sender closed its communicator normally.
	Bye
	// Heartbeat says the sender is alive; a link sends one when it has sent
	// nothing else for a while.
	Heartbeat
	// Probe names the operation its sender is waiting in (Seq and Sig), so
	// that a peer running another call at the same number finds the
	// mismatch even when neither of them sends data (both only receive).
	Probe
	maxFrameType = Probe
)

func (t FrameType) String() string {
	switch t {
	case Data:
		return "data"
	case Abort:
		return "abort"
	case Bye:
		return "bye"
	case Heartbeat:
		return "heartbeat"
	case Probe:
		return "probe"
	}
	return fmt.Sprintf("frame(%d)", uint8(t))
}

// Signature identifies an operation independently of the rank that runs it:
// every rank taking part in the same operation builds the same signature.
// The transport compares signatures; the collective layer gives them meaning.
type Signature struct {
	Kind  uint8
	DType uint8
	Op    uint8
	Root  int32
	Count uint64
}

// Header is the fixed-size prefix of every frame.
type Header struct {
	Type  FrameType
	Comm  uint32 // communicator id
	Seq   uint64 // operation sequence number on that communicator
	Sig   Signature
	Index uint32 // frame index within the operation, per direction of a link
	Len   uint32 // payload bytes that follow
}

// Encode writes h into b (HeaderSize bytes, little-endian).
func (h *Header) Encode(b *[HeaderSize]byte) {
	binary.LittleEndian.PutUint16(b[0:], frameMagic)
	b[2] = frameVersion
	b[3] = byte(h.Type)
	binary.LittleEndian.PutUint32(b[4:], h.Comm)
	binary.LittleEndian.PutUint64(b[8:], h.Seq)
	b[16] = h.Sig.Kind
	b[17] = h.Sig.DType
	b[18] = h.Sig.Op
	b[19] = 0 // reserved
	binary.LittleEndian.PutUint32(b[20:], uint32(h.Sig.Root))
	binary.LittleEndian.PutUint64(b[24:], h.Sig.Count)
	binary.LittleEndian.PutUint32(b[32:], h.Index)
	binary.LittleEndian.PutUint32(b[36:], h.Len)
}

// Decode parses and validates a header. It never trusts the peer: a wrong
// magic, version, type, reserved byte, an oversized length, or a length on
// a frame that carries no payload (bye, heartbeat, probe: the reader would
// not consume it, and would take its bytes for the next header) is an
// error wrapping ErrProtocol.
func (h *Header) Decode(b *[HeaderSize]byte) error {
	if m := binary.LittleEndian.Uint16(b[0:]); m != frameMagic {
		return fmt.Errorf("%w: bad frame magic %#04x", ErrProtocol, m)
	}
	if b[2] != frameVersion {
		return fmt.Errorf("%w: frame version %d, want %d", ErrProtocol, b[2], frameVersion)
	}
	t := FrameType(b[3])
	if t == 0 || t > maxFrameType {
		return fmt.Errorf("%w: unknown frame type %d", ErrProtocol, b[3])
	}
	if b[19] != 0 {
		return fmt.Errorf("%w: reserved header byte is %d", ErrProtocol, b[19])
	}
	n := binary.LittleEndian.Uint32(b[36:])
	if limit := payloadLimit(t); n > limit {
		if limit == 0 {
			return fmt.Errorf("%w: %s frame announces %d payload bytes, but carries none", ErrProtocol, t, n)
		}
		return fmt.Errorf("%w: %s frame announces %d payload bytes (limit %d)", ErrProtocol, t, n, limit)
	}
	*h = Header{
		Type: t,
		Comm: binary.LittleEndian.Uint32(b[4:]),
		Seq:  binary.LittleEndian.Uint64(b[8:]),
		Sig: Signature{
			Kind:  b[16],
			DType: b[17],
			Op:    b[18],
			Root:  int32(binary.LittleEndian.Uint32(b[20:])),
			Count: binary.LittleEndian.Uint64(b[24:]),
		},
		Index: binary.LittleEndian.Uint32(b[32:]),
		Len:   n,
	}
	return nil
}

// payloadLimit is the largest payload a frame of type t may carry.
func payloadLimit(t FrameType) uint32 {
	switch t {
	case Data:
		return MaxPayload
	case Abort:
		return maxControlPayload
	}
	return 0
}
