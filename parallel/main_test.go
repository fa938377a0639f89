package parallel_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/parallel"
)

func TestMain(m *testing.M) {
	if runChild() {
		return
	}
	goleak.VerifyTestMain(m)
}

var ctx = context.Background()

// testTimeout bounds every collective call in these tests: a hang fails
// the test instead of stalling it.
const testTimeout = 30 * time.Second

func local(t testing.TB, n int) []*collective.Comm {
	t.Helper()
	return localConfig(t, n, collective.Config{})
}

func localConfig(t testing.TB, n int, cfg collective.Config) []*collective.Comm {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = testTimeout
	}
	comms, err := collective.LocalConfig(n, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { closeAll(comms) })
	return comms
}

func closeAll(comms []*collective.Comm) {
	var wg sync.WaitGroup
	for _, c := range comms {
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.Close() }()
	}
	wg.Wait()
}

// each runs fn for every rank on its own goroutine and returns each rank's
// error.
func each(n int, fn func(rank int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = fn(r)
		}()
	}
	wg.Wait()
	return errs
}

func requireAllOK(t testing.TB, errs []error) {
	t.Helper()
	for r, err := range errs {
		require.NoError(t, err, "rank %d", r)
	}
}

// newDP makes a DataParallel on every rank at once.
func newDP(t testing.TB, comms []*collective.Comm, params [][]*parallel.Param, opts parallel.DataParallelOptions) []*parallel.DataParallel {
	t.Helper()
	dps := make([]*parallel.DataParallel, len(comms))
	requireAllOK(t, each(len(comms), func(r int) error {
		var err error
		dps[r], err = parallel.NewDataParallel(ctx, comms[r], params[r], opts)
		return err
	}))
	t.Cleanup(func() {
		for _, dp := range dps {
			dp.Close()
		}
	})
	return dps
}
