package tree_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/ring"
	"github.com/ringo-ml/ringo/tree"
)

// chanLink is one end of an in-memory connection: frames are copied into a
// channel on Send and out of it on Wait, which checks that each frame fits
// the receive posted for it exactly, as the real transport does.
type chanLink struct {
	in, out chan []byte
	posted  [][]byte
}

func (l *chanLink) Post(dst []byte) error { l.posted = append(l.posted, dst); return nil }

func (l *chanLink) Wait() error {
	dst := l.posted[0]
	l.posted = l.posted[1:]
	f := <-l.in
	if len(f) != len(dst) {
		return fmt.Errorf("frame of %d bytes for a receive of %d", len(f), len(dst))
	}
	copy(dst, f)
	return nil
}

func (l *chanLink) Send(src []byte) (uint64, error) {
	l.out <- append([]byte(nil), src...)
	return 0, nil
}

func (l *chanLink) Flush(uint64) error { return nil }

// TestBroadcast runs every root on 1..9 ranks and checks every rank got the
// root's bytes and that no frame was left unread on any link (each rank
// received exactly what was sent to it: the data once, the "joined" frames).
func TestBroadcast(t *testing.T) {
	for n := 1; n <= 9; n++ {
		for root := range n {
			for _, count := range []int{0, 1, 7, 1000} {
				links := make([][]ring.Link, n)
				ends := make([][]*chanLink, n)
				for r := range links {
					links[r], ends[r] = make([]ring.Link, n), make([]*chanLink, n)
				}
				for a := range n {
					for b := a + 1; b < n; b++ {
						ab, ba := make(chan []byte, 64), make(chan []byte, 64)
						ends[a][b], ends[b][a] = &chanLink{in: ba, out: ab}, &chanLink{in: ab, out: ba}
						links[a][b], links[b][a] = ends[a][b], ends[b][a]
					}
				}
				bufs := make([][]int32, n)
				for r := range bufs {
					bufs[r] = make([]int32, count)
					if r == root {
						for i := range bufs[r] {
							bufs[r][i] = int32(i*31 + root)
						}
					}
				}
				errs := make([]error, n)
				var wg sync.WaitGroup
				for r := range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						errs[r] = tree.Broadcast(r, n, root, links[r], bufs[r])
					}()
				}
				wg.Wait()
				for r := range n {
					require.NoError(t, errs[r], "n=%d root=%d rank %d", n, root, r)
					require.Equal(t, bufs[root], bufs[r], "n=%d root=%d count=%d rank %d", n, root, count, r)
					for p, e := range ends[r] {
						if e != nil {
							require.Empty(t, e.in, "n=%d root=%d: frame from %d left unread at %d", n, root, p, r)
						}
					}
				}
			}
		}
	}
}
