// Package rankdesc is what the training APIs (package parallel, its
// subpackages, and shard) use to check that every rank was given the same
// setup before they start: rank 0's description of its setup, broadcast to
// every rank (Broadcast), in a small encoding of uvarints and
// length-prefixed strings (AppendString, Reader) that reads malformed bytes
// without panicking.
package rankdesc

import (
	"context"
	"encoding/binary"
	"errors"

	"github.com/ringo-ml/ringo/collective"
)

// Broadcast gives every rank rank 0's *b: its length, then its bytes. On
// the other ranks it replaces *b. It is a collective call.
func Broadcast(ctx context.Context, comm *collective.Comm, b *[]byte) error {
	n := []int64{int64(len(*b))}
	if err := collective.Broadcast(ctx, comm, n, 0); err != nil {
		return err
	}
	if comm.Rank() != 0 {
		*b = make([]byte, n[0])
	}
	return collective.Broadcast(ctx, comm, *b, 0)
}

// AppendString appends s to b as its length (a uvarint) and its bytes.
func AppendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// ErrShort is what Reader.Err says of bytes that end early.
var ErrShort = errors.New("description ends early")

// Reader reads uvarints (binary.AppendUvarint) and strings (AppendString)
// in the order they were written. After the first error it reads zeros.
type Reader struct {
	b   []byte
	err error
}

// NewReader reads b.
func NewReader(b []byte) *Reader { return &Reader{b: b} }

// Err is the first error, or nil.
func (r *Reader) Err() error { return r.err }

// Uvarint reads a uvarint.
func (r *Reader) Uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = ErrShort
		return 0
	}
	r.b = r.b[n:]
	return v
}

// Str reads a string.
func (r *Reader) Str() string {
	n := r.Uvarint()
	if r.err != nil || n > uint64(len(r.b)) {
		r.err = ErrShort
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}
