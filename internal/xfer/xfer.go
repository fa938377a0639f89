// Package xfer moves whole vectors over a link, in pieces no larger than a
// frame may be, for the algorithms that send a vector (or a block) as one
// message: recursive doubling, gather, scatter, all-to-all.
package xfer

import (
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/link"
)

// MaxPiece bounds one frame.
const MaxPiece = 4 << 20

// pieces calls f on successive pieces of b of at most MaxPiece bytes (one
// empty piece for an empty b, so that the peers still exchange a frame and
// check they agree).
func pieces[T link.Elem](b []T, f func(lo, hi int) error) error {
	step := max(1, MaxPiece/kernel.Size[T]())
	for lo := 0; lo == 0 || lo < len(b); lo += step {
		if err := f(lo, min(len(b), lo+step)); err != nil {
			return err
		}
	}
	return nil
}

// Exchange sends out to the peer and receives the peer's vector into in.
func Exchange[T link.Elem](l link.Link, out, in []T) error {
	return SendRecv(l, out, l, in)
}

// SendRecv sends out on to and at the same time receives in on from; to and
// from may be the same link, and out and in may differ in length. Pieces go
// in step (post piece i, send piece i, wait for both), so neither side ever
// has more than one piece queued.
func SendRecv[T link.Elem](to link.Link, out []T, from link.Link, in []T) error {
	step := max(1, MaxPiece/kernel.Size[T]())
	n := max(1, (len(out)+step-1)/step, (len(in)+step-1)/step)
	piece := func(b []T, i int) ([]T, bool) {
		if i > 0 && i*step >= len(b) {
			return nil, false // b has fewer pieces (an empty b has one)
		}
		return b[min(len(b), i*step):min(len(b), (i+1)*step)], true
	}
	for i := range n {
		inPiece, recv := piece(in, i)
		outPiece, send := piece(out, i)
		if recv {
			if err := from.Post(kernel.Bytes(inPiece)); err != nil {
				return err
			}
		}
		var t uint64
		if send {
			var err error
			if t, err = to.Send(kernel.Bytes(outPiece)); err != nil {
				return err
			}
		}
		if recv {
			if err := from.Wait(); err != nil {
				return err
			}
		}
		if send {
			if err := to.Flush(t); err != nil { // out is on the wire until then
				return err
			}
		}
	}
	return nil
}

// Send sends buf to the peer and waits until it is written.
func Send[T link.Elem](l link.Link, buf []T) error {
	return pieces(buf, func(lo, hi int) error {
		t, err := l.Send(kernel.Bytes(buf[lo:hi]))
		if err != nil {
			return err
		}
		return l.Flush(t)
	})
}

// Recv receives the peer's vector into buf.
func Recv[T link.Elem](l link.Link, buf []T) error {
	return pieces(buf, func(lo, hi int) error {
		if err := l.Post(kernel.Bytes(buf[lo:hi])); err != nil {
			return err
		}
		return l.Wait()
	})
}
