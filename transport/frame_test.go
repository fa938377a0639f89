package transport

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func encodeHeader(h Header) [HeaderSize]byte {
	var b [HeaderSize]byte
	h.Encode(&b)
	return b
}

func TestHeaderRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		h    Header
	}{
		{"data zero", Header{Type: Data}},
		{"data typical", Header{Type: Data, Comm: 3, Seq: 57, Sig: Signature{Kind: 1, DType: 2, Op: 3, Root: 0, Count: 1 << 20}, Index: 4, Len: 65536}},
		{"data negative root", Header{Type: Data, Comm: 1, Seq: 1, Sig: Signature{Root: -1, Count: 10}, Len: 1}},
		{"data extremes", Header{
			Type: Data, Comm: math.MaxUint32, Seq: math.MaxUint64,
			Sig:   Signature{Kind: 255, DType: 255, Op: 255, Root: math.MaxInt32, Count: math.MaxUint64},
			Index: math.MaxUint32, Len: MaxPayload,
		}},
		{"data min root", Header{Type: Data, Sig: Signature{Root: math.MinInt32}}},
		{"abort max reason", Header{Type: Abort, Comm: 9, Len: maxControlPayload}},
		{"abort empty", Header{Type: Abort}},
		{"bye", Header{Type: Bye, Comm: 12}},
		{"heartbeat", Header{Type: Heartbeat}},
		{"probe", Header{Type: Probe, Comm: 3, Seq: 57, Sig: Signature{Kind: 1, DType: 2, Op: 3, Count: 12}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := encodeHeader(tc.h)
			var got Header
			require.NoError(t, got.Decode(&b))
			assert.Equal(t, tc.h, got)
			// Re-encoding gives the same bytes.
			assert.Equal(t, b, encodeHeader(got))
		})
	}
}

func TestHeaderWireLayout(t *testing.T) {
	h := Header{
		Type: Abort, Comm: 0x04030201, Seq: 0x0c0b0a0908070605,
		Sig:   Signature{Kind: 0x10, DType: 0x11, Op: 0x12, Root: -2, Count: 0x1f1e1d1c1b1a1918},
		Index: 0x23222120, Len: 0x0102,
	}
	b := encodeHeader(h)
	assert.Equal(t, uint16(frameMagic), binary.LittleEndian.Uint16(b[0:]))
	assert.Equal(t, byte(frameVersion), b[2])
	assert.Equal(t, byte(Abort), b[3])
	assert.Equal(t, []byte{1, 2, 3, 4}, b[4:8])
	assert.Equal(t, []byte{5, 6, 7, 8, 9, 10, 11, 12}, b[8:16])
	assert.Equal(t, []byte{0x10, 0x11, 0x12, 0}, b[16:20], "kind, dtype, op, reserved")
	assert.Equal(t, []byte{0xfe, 0xff, 0xff, 0xff}, b[20:24], "root -2, little-endian two's complement")
	assert.Equal(t, []byte{0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f}, b[24:32])
	assert.Equal(t, []byte{0x20, 0x21, 0x22, 0x23}, b[32:36])
	assert.Equal(t, []byte{0x02, 0x01, 0, 0}, b[36:40])
}

func TestHeaderDecodeRejects(t *testing.T) {
	valid := encodeHeader(Header{Type: Data, Comm: 7, Seq: 8, Sig: Signature{Kind: 1, Count: 5}, Index: 2, Len: 100})
	cases := []struct {
		name   string
		mutate func(b *[HeaderSize]byte)
		text   string
	}{
		{"bad magic", func(b *[HeaderSize]byte) { b[0] ^= 0xff }, "magic"},
		{"bad magic second byte", func(b *[HeaderSize]byte) { b[1] = 0 }, "magic"},
		{"all zero", func(b *[HeaderSize]byte) { *b = [HeaderSize]byte{} }, "magic"},
		{"version 0", func(b *[HeaderSize]byte) { b[2] = 0 }, "version"},
		{"version 2", func(b *[HeaderSize]byte) { b[2] = 2 }, "version"},
		{"version 255", func(b *[HeaderSize]byte) { b[2] = 255 }, "version"},
		{"type 0", func(b *[HeaderSize]byte) { b[3] = 0 }, "frame type"},
		{"type after the last", func(b *[HeaderSize]byte) { b[3] = byte(maxFrameType) + 1 }, "frame type"},
		{"type 255", func(b *[HeaderSize]byte) { b[3] = 255 }, "frame type"},
		{"reserved byte 1", func(b *[HeaderSize]byte) { b[19] = 1 }, "reserved"},
		{"reserved byte 255", func(b *[HeaderSize]byte) { b[19] = 255 }, "reserved"},
		{"data too long", func(b *[HeaderSize]byte) { binary.LittleEndian.PutUint32(b[36:], MaxPayload+1) }, "payload"},
		{"data max uint32", func(b *[HeaderSize]byte) { binary.LittleEndian.PutUint32(b[36:], math.MaxUint32) }, "payload"},
		{"abort too long", func(b *[HeaderSize]byte) {
			b[3] = byte(Abort)
			binary.LittleEndian.PutUint32(b[36:], maxControlPayload+1)
		}, "abort"},
		{"abort data-sized", func(b *[HeaderSize]byte) {
			b[3] = byte(Abort)
			binary.LittleEndian.PutUint32(b[36:], MaxPayload)
		}, "abort"},
		{"bye too long", func(b *[HeaderSize]byte) {
			b[3] = byte(Bye)
			binary.LittleEndian.PutUint32(b[36:], maxControlPayload+1)
		}, "bye"},
		// The reader consumes no payload of these: a length would put the
		// stream out of step.
		{"bye with a payload", func(b *[HeaderSize]byte) {
			b[3] = byte(Bye)
			binary.LittleEndian.PutUint32(b[36:], 1)
		}, "bye frame announces 1 payload bytes, but carries none"},
		{"heartbeat with a payload", func(b *[HeaderSize]byte) {
			b[3] = byte(Heartbeat)
			binary.LittleEndian.PutUint32(b[36:], HeaderSize)
		}, "heartbeat frame announces 40 payload bytes, but carries none"},
		{"probe with a payload", func(b *[HeaderSize]byte) {
			b[3] = byte(Probe)
			binary.LittleEndian.PutUint32(b[36:], maxControlPayload)
		}, "probe frame"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := valid
			tc.mutate(&b)
			sentinel := Header{Type: Bye, Comm: 99, Seq: 99, Len: 1}
			got := sentinel
			err := got.Decode(&b)
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrProtocol), "error %q does not match ErrProtocol", err)
			assert.Contains(t, err.Error(), tc.text)
			assert.Equal(t, sentinel, got, "a rejected header must not be stored")
		})
	}
}

func TestHeaderDecodeLimits(t *testing.T) {
	for _, tc := range []struct {
		typ FrameType
		n   uint32
		ok  bool
	}{
		{Data, MaxPayload, true},
		{Data, MaxPayload + 1, false},
		{Abort, maxControlPayload, true},
		{Abort, maxControlPayload + 1, false},
		{Abort, 0, true},
		{Bye, 0, true},
		{Bye, 1, false},
		{Bye, maxControlPayload, false},
		{Heartbeat, 0, true},
		{Heartbeat, 1, false},
		{Probe, 0, true},
		{Probe, 1, false},
	} {
		b := encodeHeader(Header{Type: tc.typ, Len: tc.n})
		var h Header
		err := h.Decode(&b)
		if tc.ok {
			assert.NoError(t, err, "%v frame of %d bytes", tc.typ, tc.n)
			assert.Equal(t, tc.n, h.Len)
		} else {
			assert.ErrorIs(t, err, ErrProtocol, "%v frame of %d bytes", tc.typ, tc.n)
		}
	}
}

func TestFrameTypeString(t *testing.T) {
	assert.Equal(t, "data", Data.String())
	assert.Equal(t, "abort", Abort.String())
	assert.Equal(t, "bye", Bye.String())
	assert.Equal(t, "frame(0)", FrameType(0).String())
	assert.Equal(t, "frame(200)", FrameType(200).String())
}

// FuzzHeaderDecode: Decode never panics on any 40 bytes, and whatever it
// accepts encodes back to exactly the same bytes.
func FuzzHeaderDecode(f *testing.F) {
	valid := encodeHeader(Header{Type: Data, Comm: 1, Seq: 2, Sig: Signature{Kind: 3, DType: 4, Op: 5, Root: -1, Count: 6}, Index: 7, Len: 8})
	f.Add(valid[:])
	abort := encodeHeader(Header{Type: Abort, Len: maxControlPayload})
	f.Add(abort[:])
	heartbeat := encodeHeader(Header{Type: Heartbeat, Len: HeaderSize})
	f.Add(heartbeat[:])
	reserved := valid
	reserved[19] = 1
	f.Add(reserved[:])
	f.Add(make([]byte, HeaderSize))
	f.Fuzz(func(t *testing.T, in []byte) {
		var b [HeaderSize]byte
		copy(b[:], in) // any input is made 40 bytes: cut or zero-padded
		var h Header
		err := h.Decode(&b)
		if err != nil {
			require.ErrorIs(t, err, ErrProtocol)
			return
		}
		require.GreaterOrEqual(t, h.Type, Data)
		require.LessOrEqual(t, h.Type, maxFrameType)
		switch h.Type {
		case Data:
			require.LessOrEqual(t, h.Len, uint32(MaxPayload))
		case Abort:
			require.LessOrEqual(t, h.Len, uint32(maxControlPayload))
		default: // the reader reads no payload of the other frames
			require.Zero(t, h.Len, "a %v frame with a payload was accepted", h.Type)
		}
		require.Equal(t, b, encodeHeader(h), "Encode(Decode(b)) != b")
	})
}
