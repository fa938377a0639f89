package ps_test

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/internal/testjob"
	"github.com/ringo-ml/ringo/internal/testlog"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/internal/testmodel"
	"github.com/ringo-ml/ringo/parallel/ps"
)

// failBound is how soon every rank must learn of a lost peer: 2 s is the
// requirement; in one process it is immediate, so this is the requirement
// itself.
const failBound = 2 * time.Second

// train runs steps of PushPull on worker w.
func (j *job) train(w, from, steps int) error {
	for step := from; step < from+steps; step++ {
		j.models[w].Backward((step*len(j.workers)+w)*perWorker, perWorker, 1, nil)
		if err := j.workers[w].PushPull(ctx).Wait(); err != nil {
			return err
		}
	}
	return nil
}

// A worker lost under Sync fails the step on every server, with an error
// naming the worker and its rank, and every other worker's call then fails
// with the server's reason, which names the lost worker too.
func TestSyncWorkerLostFailsEveryServerAndWorkerNamingIt(t *testing.T) {
	const S, W, victim = 2, 3, 1
	j := startJob(t, S, W, ps.Options{Consistency: ps.Sync, Optimizer: &nn.SGD{LR: 0.125}},
		func(int) *testmodel.Model { return testmodel.New(testmodel.HeadSizes(), false) })
	testjob.RequireAllOK(t, testjob.Each(W, func(w int) error { return j.train(w, 0, 2) }))
	// Step 3: the others push and wait for the victim, which crashes.
	errs := make(chan error, W)
	for w := range W {
		if w != victim {
			go func() { errs <- j.train(w, 2, 1) }()
		}
	}
	crashed := time.Now()
	j.workers[victim].Crash(errors.New("test: worker crashed"))
	// The first server to fail names the victim; a server that hears of it
	// first from another worker (whom the first server's abort has
	// stopped) names that worker, with the victim in the reason.
	named := 0
	for s := range S {
		err := <-j.serve
		assert.Less(t, time.Since(crashed), failBound)
		var we *ps.WorkerError
		require.ErrorAs(t, err, &we, "server %d", s)
		if we.Worker == victim {
			named++
			assert.Equal(t, S+victim, we.Rank)
			assert.Equal(t, 2, we.Clock, "the victim had pushed 2 steps")
		}
		assert.Contains(t, err.Error(), "worker 1 (rank 3)")
	}
	assert.Positive(t, named)
	for range W - 1 {
		err := <-errs
		assert.Less(t, time.Since(crashed), failBound)
		var se *ps.ServerError
		require.ErrorAs(t, err, &se)
		assert.Contains(t, err.Error(), "worker 1 (rank 3)", "the worker learns why the server failed")
		assert.ErrorIs(t, err, collective.ErrAborted)
	}
	for w, wk := range j.workers {
		require.Error(t, wk.PushPull(ctx).Wait(), "worker %d: later calls fail too", w)
	}
}

// Under Async and BoundedStaleness with AllowWorkerLoss, a lost worker is
// logged and reported in Status, and the others train on: under SSP the
// lost worker's clock no longer holds them back. Serve ends cleanly when
// the survivors close.
func TestWorkerLossIsSurvivableWithAllowWorkerLoss(t *testing.T) {
	for _, c := range []ps.Consistency{ps.Async, ps.BoundedStaleness(1)} {
		t.Run(c.String(), func(t *testing.T) {
			const S, W, victim = 2, 3, 1
			var logs testlog.Buffer
			j := startJob(t, S, W, ps.Options{Consistency: c, Optimizer: &nn.SGD{LR: 0.125}, AllowWorkerLoss: true,
				Logger: logs.Logger(slog.LevelInfo)}, func(int) *testmodel.Model { return testmodel.New(testmodel.HeadSizes(), false) })
			testjob.RequireAllOK(t, testjob.Each(W, func(w int) error { return j.train(w, 0, 2) }))
			j.workers[victim].Crash(errors.New("test: worker crashed"))
			require.Eventually(t, func() bool {
				return len(j.servers[0].Status().Lost) == 1 && len(j.servers[1].Status().Lost) == 1
			}, testTimeout, time.Millisecond)
			// The survivors go 10 steps past the victim's clock (2).
			testjob.RequireAllOK(t, testjob.Each(W, func(w int) error {
				if w == victim {
					return nil
				}
				return j.train(w, 2, 10)
			}))
			for s, err := range j.finish() {
				require.NoError(t, err, "server %d", s)
				st := j.servers[s].Status()
				assert.Equal(t, []int{victim}, st.Lost, "server %d", s)
				assert.Equal(t, []int{0, 2}, st.Finished, "server %d", s)
				assert.Equal(t, []int{12, 2, 12}, st.Clocks, "server %d", s)
			}
			assert.Contains(t, logs.String(), "lost a worker")
			assert.Contains(t, logs.String(), "worker 1 (rank 3)")
		})
	}
}

// Without AllowWorkerLoss, Async fails on a lost worker as Sync does.
func TestAsyncWorkerLostFailsWithoutAllowWorkerLoss(t *testing.T) {
	const S, W, victim = 1, 2, 0
	j := startJob(t, S, W, ps.Options{Consistency: ps.Async, Optimizer: &nn.SGD{LR: 0.125}},
		func(int) *testmodel.Model { return testmodel.New(testmodel.HeadSizes(), false) })
	testjob.RequireAllOK(t, testjob.Each(W, func(w int) error { return j.train(w, 0, 2) }))
	j.workers[victim].Crash(errors.New("test: worker crashed"))
	err := <-j.serve
	var we *ps.WorkerError
	require.ErrorAs(t, err, &we)
	assert.Equal(t, victim, we.Worker)
	err = j.train(1, 2, 1)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "worker 0 (rank 1)")
}

// A server that stops (here: closed mid-training) fails every worker's
// current or next call within the bound, naming the server. (A worker may
// hear it from another server first: the first worker to fail aborts its
// pairs, so the other servers fail too, with a reason that names the
// server that stopped.)
func TestLostServerFailsEveryWorkerNamingIt(t *testing.T) {
	const S, W = 3, 3
	j := startJob(t, S, W, ps.Options{Consistency: ps.Sync, Optimizer: &nn.SGD{LR: 0.125}},
		func(int) *testmodel.Model { return testmodel.New(testmodel.HeadSizes(), false) })
	testjob.RequireAllOK(t, testjob.Each(W, func(w int) error { return j.train(w, 0, 2) }))
	stopped := time.Now()
	require.NoError(t, j.servers[1].Close())
	for w, err := range testjob.Each(W, func(w int) error { return j.train(w, 2, 1) }) {
		assert.Less(t, time.Since(stopped), failBound)
		var se *ps.ServerError
		require.ErrorAs(t, err, &se, "worker %d", w)
		assert.Contains(t, err.Error(), "server 1 (rank 1) failed or was lost")
		assert.Contains(t, err.Error(), "server 1 (rank 1): ps: closed", "the reason is the server's")
	}
}

// Bad arguments on any rank fail every rank (no rank hangs), the rank at
// fault with an error that says what is wrong.
func TestSetupErrorsFailEveryRank(t *testing.T) {
	good := ps.Options{Servers: 1, Consistency: ps.Sync, Optimizer: &nn.SGD{LR: 1}}
	cases := []struct {
		name    string
		opts    func(r int) ps.Options
		params  func(r int) []*parallel.Param
		server  func(r int) bool
		want    error
		culprit int
		says    string
	}{
		{name: "no servers", opts: func(int) ps.Options { o := good; o.Servers = 0; return o },
			want: collective.ErrInvalid, culprit: 0, says: "Options.Servers = 0"},
		{name: "all servers", opts: func(int) ps.Options { o := good; o.Servers = 3; return o },
			want: collective.ErrInvalid, culprit: 0, says: "leaving at least one worker"},
		{name: "no consistency", opts: func(int) ps.Options { o := good; o.Consistency = ps.Consistency{}; return o },
			want: collective.ErrInvalid, culprit: 1, says: "Consistency is not set"},
		{name: "sync with loss", opts: func(int) ps.Options { o := good; o.AllowWorkerLoss = true; return o },
			want: collective.ErrInvalid, culprit: 2, says: "AllowWorkerLoss under Sync"},
		{name: "negative staleness", opts: func(int) ps.Options { o := good; o.Consistency = ps.BoundedStaleness(-1); return o },
			want: collective.ErrInvalid, culprit: 1, says: "BoundedStaleness(-1)"},
		{name: "no optimizer", opts: func(int) ps.Options { o := good; o.Optimizer = nil; return o },
			want: collective.ErrInvalid, culprit: 0, says: "Optimizer is nil"},
		{name: "worker calls NewServer", server: func(r int) bool { return r == 0 || r == 2 },
			want: collective.ErrInvalid, culprit: 2, says: "NewServer on rank 2, a worker"},
		{name: "other consistency", opts: func(r int) ps.Options {
			o := good
			if r == 2 {
				o.Consistency = ps.Async
			}
			return o
		}, want: collective.ErrMismatch, culprit: 2, says: "Options.Consistency differs"},
		{name: "other parameter", params: func(r int) []*parallel.Param {
			m := testmodel.New(testmodel.HeadSizes(), false)
			if r == 1 {
				m.Params[3].Data = m.Params[3].Data[:0]
				m.Params[3].Grad = m.Params[3].Grad[:0]
			}
			return m.Params
		}, want: collective.ErrMismatch, culprit: 1, says: `parameter #3 is "head1.b" (0 values); rank 0's is "head1.b" (1 values)`},
		{name: "gradients missing", params: func(r int) []*parallel.Param {
			m := testmodel.New(testmodel.HeadSizes(), false)
			if r == 2 {
				m.Params[0].Grad = nil
			}
			return m.Params
		}, want: collective.ErrInvalid, culprit: 2, says: `"head0.w" has 1 values but 0 gradients`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			comms := local(t, 3)
			errs := testjob.Each(3, func(r int) error {
				opts, params, server := good, testmodel.New(testmodel.HeadSizes(), false).Params, r < 1
				if tc.opts != nil {
					opts = tc.opts(r)
				}
				if tc.params != nil {
					params = tc.params(r)
				}
				if tc.server != nil {
					server = tc.server(r)
				}
				if server {
					s, err := ps.NewServer(ctx, comms[r], params, opts)
					if err == nil {
						s.Close()
					}
					return err
				}
				w, err := ps.NewWorker(ctx, comms[r], params, opts)
				if err == nil {
					w.Close()
				}
				return err
			})
			for r, err := range errs {
				require.ErrorIs(t, err, tc.want, "rank %d", r)
			}
			assert.ErrorContains(t, errs[tc.culprit], tc.says)
		})
	}
}

// Calls on a closed worker fail with ErrClosed; Close is idempotent.
func TestClosedWorkerRefusesCalls(t *testing.T) {
	j := startJob(t, 1, 1, ps.Options{Consistency: ps.Sync, Optimizer: &nn.SGD{LR: 1}}, func(int) *testmodel.Model { return testmodel.New(testmodel.HeadSizes(), false) })
	require.NoError(t, j.workers[0].Close())
	require.NoError(t, j.workers[0].Close())
	require.ErrorIs(t, j.workers[0].Push(ctx).Wait(), ps.ErrClosed)
	require.ErrorIs(t, j.workers[0].Pull(ctx).Wait(), ps.ErrClosed)
	require.ErrorIs(t, j.workers[0].PushPull(ctx).Wait(), ps.ErrClosed)
	require.NoError(t, <-j.serve)
}
