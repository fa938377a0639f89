package tree_test

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/algo/tree"
	"github.com/ringo-ml/ringo/internal/linktest"
)

// TestBroadcast runs every root on 1..9 ranks and checks every rank got the
// root's bytes and that no frame was left unread on any link (each rank
// received exactly what was sent to it: the data once, the "joined" frames).
func TestBroadcast(t *testing.T) {
	for n := 1; n <= 9; n++ {
		for root := range n {
			for _, count := range []int{0, 1, 7, 1000} {
				links, ends := linktest.Mesh(n)
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
							require.Zero(t, e.Unread(), "n=%d root=%d: frame from %d left unread at %d", n, root, p, r)
						}
					}
				}
			}
		}
	}
}
