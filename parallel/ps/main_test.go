package ps_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/parallel/internal/testmodel"
	"github.com/ringo-ml/ringo/parallel/ps"
)

func TestMain(m *testing.M) {
	testjob.RunRank(childRoles)
	goleak.VerifyTestMain(m)
}

var ctx = context.Background()

// testTimeout bounds every collective call: a hang fails the test instead
// of stalling it.
const testTimeout = 30 * time.Second

func local(t testing.TB, n int) []*collective.Comm {
	t.Helper()
	comms, err := collective.LocalConfig(n, collective.Config{Timeout: testTimeout})
	require.NoError(t, err)
	t.Cleanup(func() { testjob.CloseAll(comms) })
	return comms
}

// job is a parameter-server job of S servers and W workers on local
// ranks: servers[s] and workers[w] are set on their ranks.
type job struct {
	comms   []*collective.Comm
	servers []*ps.Server
	workers []*ps.Worker
	models  []*testmodel.Model // the workers'
	serve   chan error
}

// startJob sets a job up (every rank at once) and starts every server's
// Serve; model(w) is worker w's model.
func startJob(t testing.TB, S, W int, opts ps.Options, newModel func(w int) *testmodel.Model) *job {
	t.Helper()
	opts.Servers = S
	j := &job{comms: local(t, S+W), servers: make([]*ps.Server, S), workers: make([]*ps.Worker, W), models: make([]*testmodel.Model, W), serve: make(chan error, S)}
	for w := range W {
		j.models[w] = newModel(w)
	}
	testjob.RequireAllOK(t, testjob.Each(S+W, func(r int) error {
		var err error
		if r < S {
			j.servers[r], err = ps.NewServer(ctx, j.comms[r], j.models[0].Params, opts)
			return err
		}
		j.workers[r-S], err = ps.NewWorker(ctx, j.comms[r], j.models[r-S].Params, opts)
		return err
	}))
	for _, s := range j.servers {
		go func() { j.serve <- s.Serve(ctx) }()
	}
	t.Cleanup(func() {
		// At once, in parallel.
		testjob.Each(len(j.workers), func(w int) error { return j.workers[w].Close() })
		testjob.Each(len(j.servers), func(s int) error { return j.servers[s].Close() })
	})
	return j
}

// finish closes every worker and returns every server's Serve result.
func (j *job) finish() []error {
	testjob.Each(len(j.workers), func(w int) error { return j.workers[w].Close() })
	errs := make([]error, len(j.servers))
	for i := range j.servers {
		errs[i] = <-j.serve
	}
	return errs
}
