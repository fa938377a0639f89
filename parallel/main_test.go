package parallel_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel"
)

func TestMain(m *testing.M) {
	testjob.RunRank(childRoles)
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
	t.Cleanup(func() { testjob.CloseAll(comms) })
	return comms
}

// newDP makes a DataParallel on every rank at once.
func newDP(t testing.TB, comms []*collective.Comm, params [][]*parallel.Param, opts parallel.DataParallelOptions) []*parallel.DataParallel {
	t.Helper()
	dps := make([]*parallel.DataParallel, len(comms))
	testjob.RequireAllOK(t, testjob.Each(len(comms), func(r int) error {
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
