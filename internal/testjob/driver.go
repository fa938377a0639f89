package testjob

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// Driver runs one step on every rank at a time: rank 0 on the calling
// goroutine, the others on goroutines that wait for their turn, so that a
// Run allocates nothing of its own and testing.AllocsPerRun counts the
// step's allocations alone.
type Driver struct {
	step  func(rank int) error
	start []chan struct{} // rank r's turn (r ≥ 1)
	done  chan error
}

// NewDriver starts the goroutines of ranks 1..n-1; they end with the test.
func NewDriver(t testing.TB, n int, step func(rank int) error) *Driver {
	d := &Driver{step: step, start: make([]chan struct{}, n), done: make(chan error, n)}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for r := 1; r < n; r++ {
		d.start[r] = make(chan struct{})
		wg.Go(func() {
			for {
				select {
				case <-d.start[r]:
					d.done <- step(r)
				case <-stop:
					return
				}
			}
		})
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
	return d
}

// Run runs one step on every rank and returns rank 0's error, else the
// first other's.
func (d *Driver) Run() error {
	for r := 1; r < len(d.start); r++ {
		d.start[r] <- struct{}{}
	}
	err := d.step(0)
	for r := 1; r < len(d.start); r++ {
		if e := <-d.done; err == nil {
			err = e
		}
	}
	return err
}

// AllocsPerStep runs a few steps (what a first step makes, scratch
// buffers and links, is made then), then returns what a step allocates on
// all ranks together, on average; it fails the test if a step fails.
func (d *Driver) AllocsPerStep(t testing.TB) float64 {
	t.Helper()
	for range 3 {
		require.NoError(t, d.Run())
	}
	var err error
	allocs := testing.AllocsPerRun(20, func() {
		if e := d.Run(); e != nil {
			err = e
		}
	})
	require.NoError(t, err)
	return allocs
}

// RequireNoAllocs requires that a step, once warm, allocate nothing on
// any rank.
func (d *Driver) RequireNoAllocs(t testing.TB, what string) {
	t.Helper()
	require.Zero(t, d.AllocsPerStep(t), "allocations per %s across all %d ranks", what, len(d.start))
}
