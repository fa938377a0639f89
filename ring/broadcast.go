package ring

import (
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/link"
)

// Broadcast copies root's buf to every rank along the ring: root sends to
// root+1, which forwards to root+2, and so on, piece by piece so that every
// link is busy at once. Its time is about (size-2+pieces)·piece time.
//
// The last rank of the chain then sends the root an empty acknowledgement, so
// that the root too receives a frame of this call and a rank that wrongly
// believes itself the root is found out before its call returns.
// ackFrom and ackTo are the links from the last rank to the root and back.
func Broadcast[T link.Elem](r *Ring, buf []T, root int, ackFrom, ackTo link.Link) error {
	if r.size == 1 {
		return nil
	}
	pos := mod(r.rank-root, r.size)
	seg := max(1, r.opt.SegmentBytes/kernel.Size[T]())
	minSeg := max(1, r.opt.MinSegmentBytes/kernel.Size[T]())
	// Enough pieces to keep the chain busy, none smaller than worth a frame.
	seg = min(seg, max(minSeg, (len(buf)+2*r.opt.Depth-1)/(2*r.opt.Depth)))
	pieces := max(1, (len(buf)+seg-1)/seg) // an empty buffer still sends one empty frame
	piece := func(i int) []T { return buf[min(len(buf), i*seg):min(len(buf), (i+1)*seg)] }

	var last uint64
	if pos == 0 {
		if err := ackFrom.Post(nil); err != nil {
			return err
		}
		for i := range pieces {
			t, err := r.right.Send(kernel.Bytes(piece(i)))
			if err != nil {
				return err
			}
			last = t
		}
		if err := r.right.Flush(last); err != nil {
			return err
		}
		return ackFrom.Wait()
	}
	forward := pos != r.size-1
	for i := range min(pieces, r.opt.Depth) {
		if err := r.left.Post(kernel.Bytes(piece(i))); err != nil {
			return err
		}
	}
	for i := range pieces {
		if err := r.left.Wait(); err != nil {
			return err
		}
		if forward {
			t, err := r.right.Send(kernel.Bytes(piece(i)))
			if err != nil {
				return err
			}
			last = t
		}
		if next := i + r.opt.Depth; next < pieces {
			if err := r.left.Post(kernel.Bytes(piece(next))); err != nil {
				return err
			}
		}
	}
	if !forward {
		t, err := ackTo.Send(nil)
		if err != nil {
			return err
		}
		return ackTo.Flush(t)
	}
	return r.right.Flush(last)
}
