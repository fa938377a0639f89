package doubling

import (
	"github.com/ringo-ml/ringo/internal/xfer"
	"github.com/ringo-ml/ringo/link"
)

// fold is Rabenseifner's fold of size ranks onto p2, the largest power of
// two not above size, as one rank sees it: with rem = size-p2, each even
// rank below 2·rem hands its vector to the odd rank above it and sits out;
// the odd rank stands in for both as virtual rank rank/2, the others as
// rank-rem, and the stand-ins hand the result back at the end.
type fold struct {
	rank, p2, rem int
	vrank         int // this rank's virtual rank (meaningless if it sits out)
}

func newFold(rank, size int) fold {
	p2 := 1
	for p2*2 <= size {
		p2 *= 2
	}
	f := fold{rank: rank, p2: p2, rem: size - p2, vrank: rank - (size - p2)}
	if rank < 2*f.rem {
		f.vrank = rank / 2
	}
	return f
}

// real is the rank standing for virtual rank v.
func (f fold) real(v int) int {
	if v < f.rem {
		return 2*v + 1
	}
	return v + f.rem
}

// in runs the fold's first step on buf: a rank that sits out hands buf
// over, receives the result into it and returns out = true (it is done);
// its partner receives buf into scratch (len(buf) elements) and reduces it
// in, the lower rank's value first.
func foldIn[T link.Elem](f fold, links []link.Link, buf, scratch []T, red link.Reducer[T]) (out bool, err error) {
	if f.rank >= 2*f.rem {
		return false, nil
	}
	if f.rank%2 == 0 {
		if err := xfer.Send(links[f.rank+1], buf); err != nil {
			return true, err
		}
		return true, xfer.Recv(links[f.rank+1], buf)
	}
	in := scratch[:len(buf)]
	if err := xfer.Recv(links[f.rank-1], in); err != nil {
		return false, err
	}
	red.ReduceTo(buf, in, buf)
	return false, nil
}

// foldOut hands the result back to the rank that sat out, if this rank
// stood in for it.
func foldOut[T link.Elem](f fold, links []link.Link, buf []T) error {
	if f.rank < 2*f.rem {
		return xfer.Send(links[f.rank-1], buf)
	}
	return nil
}
