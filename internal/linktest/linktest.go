// Package linktest gives tests of the algorithm packages (doubling, tree,
// direct) in-memory link.Links: every pair of ranks joined by channels, with
// the receive checks of the real transport and none of its machinery.
package linktest

import (
	"fmt"

	"github.com/ringo-ml/ringo/link"
)

// Chan is one end of an in-memory connection: frames are copied into a
// channel on Send and out of it on Wait, which checks that each frame fits
// the receive posted for it exactly, as the real transport does. Sends do
// not wait for the peer (up to 64 frames queued per direction).
type Chan struct {
	in, out chan []byte
	posted  [][]byte
}

// Post asks for the next frame to land in dst.
func (l *Chan) Post(dst []byte) error { l.posted = append(l.posted, dst); return nil }

// Wait receives the oldest posted frame.
func (l *Chan) Wait() error {
	if len(l.posted) == 0 {
		return fmt.Errorf("linktest: Wait without a posted receive")
	}
	dst := l.posted[0]
	l.posted = l.posted[1:]
	f := <-l.in
	if len(f) != len(dst) {
		return fmt.Errorf("frame of %d bytes for a receive of %d", len(f), len(dst))
	}
	copy(dst, f)
	return nil
}

// Send queues a copy of src.
func (l *Chan) Send(src []byte) (uint64, error) {
	l.out <- append([]byte(nil), src...)
	return 0, nil
}

// Flush returns at once: Send has copied the frame.
func (l *Chan) Flush(uint64) error { return nil }

// Unread is how many frames from the peer nobody has received.
func (l *Chan) Unread() int { return len(l.in) }

// Mesh joins n ranks pairwise: ends[r][p] is rank r's end of its
// connection to rank p (nil for p == r), and links[r] the same as the
// algorithms take them.
func Mesh(n int) (links [][]link.Link, ends [][]*Chan) {
	links, ends = make([][]link.Link, n), make([][]*Chan, n)
	for r := range n {
		links[r], ends[r] = make([]link.Link, n), make([]*Chan, n)
	}
	for a := range n {
		for b := a + 1; b < n; b++ {
			ab, ba := make(chan []byte, 64), make(chan []byte, 64)
			ends[a][b], ends[b][a] = &Chan{in: ba, out: ab}, &Chan{in: ab, out: ba}
			links[a][b], links[b][a] = ends[a][b], ends[b][a]
		}
	}
	return links, ends
}
