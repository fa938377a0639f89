package shm

import (
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/transport"
)

// FuzzRing is the decoder of what a peer leaves in shared memory: a reader
// given any segment header, any published tail and any bytes in the ring
// must return frames, an error or the end of the stream, and never panic,
// read outside the ring or hand out bytes the peer never published.
func FuzzRing(f *testing.F) {
	var frame [transport.HeaderSize]byte
	h := transport.Header{Type: transport.Data, Comm: 1, Seq: 2, Len: 5}
	h.Encode(&frame)
	valid := append(frame[:], "hello"...)
	header := make([]byte, 16)
	initHeader(header[:16:16], MinSegmentBytes)
	f.Add(header, uint64(len(valid)), valid)
	f.Add(header, uint64(MinSegmentBytes), valid)
	f.Add(header, uint64(MinSegmentBytes+1), valid)
	f.Add(header, ^uint64(0), valid)
	f.Add(header, uint64(3), valid)
	f.Add([]byte("RINGOSHM\x01\x00\x00\x00\x00\x00\x00\x40"), uint64(10), valid)
	f.Fuzz(func(t *testing.T, hdr []byte, tail uint64, data []byte) {
		mem := make([]byte, dataOffset+MinSegmentBytes)
		initHeader(mem, MinSegmentBytes)
		copy(mem[:16], hdr) // the peer may have written anything there
		in, err := over(mem)
		if err != nil {
			require.ErrorIs(t, err, transport.ErrProtocol)
			return
		}
		for i := 0; len(data) > 0 && i < len(in.data); i += len(data) {
			copy(in.data[i:], data)
		}
		in.tail.Store(tail)
		out := heapSegment(t)
		mine, peers := transport.Pipe()
		require.NoError(t, peers.Close()) // the peer is gone: the reader must not wait
		s := newStream(in, out, mine, Options{Spin: -1})
		defer s.Close()

		c := transport.NewConn(s)
		var buf [1 << 12]byte
		var got uint64
		for {
			var h transport.Header
			err := c.ReadHeader(&h)
			if err == nil {
				got += transport.HeaderSize
				for left := int(h.Len); left > 0 && err == nil; {
					n := min(left, len(buf))
					err = c.ReadPayload(buf[:n])
					left -= n
					if err == nil {
						got += uint64(n)
					}
				}
			}
			if err != nil {
				if tail > MinSegmentBytes {
					require.ErrorIs(t, err, transport.ErrProtocol, "a tail beyond the ring")
				} else if !errors.Is(err, transport.ErrProtocol) {
					require.True(t, errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF), "%v", err)
				}
				break
			}
		}
		require.LessOrEqual(t, got, tail, "read more than was published")
		require.Equal(t, uint64(0), binary.LittleEndian.Uint64(out.mem[offTail:]), "a reader writes nothing into the other ring")
	})
}

// heapSegment is a segment in ordinary memory, for tests.
func heapSegment(t *testing.T) *segment {
	mem := make([]byte, dataOffset+MinSegmentBytes)
	initHeader(mem, MinSegmentBytes)
	g, err := over(mem)
	require.NoError(t, err)
	return g
}

// A writer whose reader's head is not within a ring of its own position
// (ahead of it, or a ring and more behind) stops with a protocol error
// instead of overwriting what it cannot know is read.
func TestWriterRefusesACorruptHead(t *testing.T) {
	for _, head := range []uint64{1, MinSegmentBytes + 100, ^uint64(MinSegmentBytes)} { // ahead; a ring and more ahead; a ring and one behind
		in, out := heapSegment(t), heapSegment(t)
		mine, peers := transport.Pipe()
		s := newStream(in, out, mine, Options{Spin: -1})
		out.head.Store(head)
		_, err := s.Write(make([]byte, 10))
		require.ErrorIs(t, err, transport.ErrProtocol, "head %d", head)
		require.NoError(t, s.Close())
		require.NoError(t, peers.Close())
	}
}

// A byte on the control stream that is no bell ends the stream as a lost
// peer would: what the ring holds is read, then the end.
func TestNoiseOnTheControlStreamEndsTheStream(t *testing.T) {
	in, out := heapSegment(t), heapSegment(t)
	mine, peers := transport.Pipe()
	defer peers.Close()
	in.copyIn(0, []byte("ok"))
	in.tail.Store(2)
	s := newStream(in, out, mine, Options{Spin: -1})
	defer s.Close()
	_, err := peers.Write([]byte("r?"))
	require.NoError(t, err)
	got, err := io.ReadAll(s)
	require.NoError(t, err)
	require.Equal(t, "ok", string(got))
	_, err = s.Write([]byte("x"))
	require.ErrorIs(t, err, io.ErrClosedPipe)
}
