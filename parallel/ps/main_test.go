package ps_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/ps"
)

func TestMain(m *testing.M) {
	if runChild() {
		return
	}
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
	t.Cleanup(func() {
		each(n, func(r int) error { return comms[r].Close() })
	})
	return comms
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

// job is a parameter-server job of S servers and W workers on local
// ranks: servers[s] and workers[w] are set on their ranks.
type job struct {
	comms   []*collective.Comm
	servers []*ps.Server
	workers []*ps.Worker
	models  []*model // the workers'
	serve   chan error
}

// startJob sets a job up (every rank at once) and starts every server's
// Serve; model(w) is worker w's model.
func startJob(t testing.TB, S, W int, opts ps.Options, newModel func(w int) *model) *job {
	t.Helper()
	opts.Servers = S
	j := &job{comms: local(t, S+W), servers: make([]*ps.Server, S), workers: make([]*ps.Worker, W), models: make([]*model, W), serve: make(chan error, S)}
	for w := range W {
		j.models[w] = newModel(w)
	}
	requireAllOK(t, each(S+W, func(r int) error {
		var err error
		if r < S {
			j.servers[r], err = ps.NewServer(ctx, j.comms[r], j.models[0].params, opts)
			return err
		}
		j.workers[r-S], err = ps.NewWorker(ctx, j.comms[r], j.models[r-S].params, opts)
		return err
	}))
	for _, s := range j.servers {
		go func() { j.serve <- s.Serve(ctx) }()
	}
	t.Cleanup(func() {
		// At once: a failed one lingers a second before closing.
		each(len(j.workers), func(w int) error { return j.workers[w].Close() })
		each(len(j.servers), func(s int) error { return j.servers[s].Close() })
	})
	return j
}

// finish closes every worker and returns every server's Serve result.
func (j *job) finish() []error {
	each(len(j.workers), func(w int) error { return j.workers[w].Close() })
	errs := make([]error, len(j.servers))
	for i := range j.servers {
		errs[i] = <-j.serve
	}
	return errs
}

// The test model: independent linear heads fitted with an L1 loss (as in
// package parallel's tests). Head h predicts w_h·x + b_h; the gradient of
// |pred − t| is sign(pred − t)·x, a small integer per sample, so a batch's
// mean gradient over a power-of-two count is exact, and so is any sum of
// such gradients: averaging in any order gives the same bits.
type model struct {
	sizes  []int
	params []*parallel.Param
}

// headSizes: odd sizes, a single weight, and one big head (split across
// servers).
var headSizes = []int{1, 7, 33, 1000, 3}

func newModel(sizes []int, junk bool) *model {
	m := &model{sizes: sizes}
	for h, n := range sizes {
		w := &parallel.Param{Name: fmt.Sprintf("head%d.w", h), Data: make([]float32, n), Grad: make([]float32, n)}
		b := &parallel.Param{Name: fmt.Sprintf("head%d.b", h), Data: make([]float32, 1), Grad: make([]float32, 1)}
		for j := range w.Data {
			w.Data[j] = float32((j*5+h)%9-4) / 4
			if junk {
				w.Data[j] = 99
			}
		}
		if junk {
			b.Data[0] = 99
		}
		m.params = append(m.params, w, b)
	}
	return m
}

func feature(s, h, j int) float32 { return float32((s*7+h*3+j*5)%7 - 3) }
func target(s, h int) float32     { return float32((s*11+h)%9 - 4) }

// backward writes into every p.Grad the mean gradient over the samples
// [from, from+count) (count a power of two), times scale.
func (m *model) backward(from, count int, scale float32) {
	for h := range m.sizes {
		w, b := m.params[2*h], m.params[2*h+1]
		clear(w.Grad)
		b.Grad[0] = 0
		for s := from; s < from+count; s++ {
			pred := b.Data[0]
			for j, wj := range w.Data {
				pred += wj * feature(s, h, j)
			}
			var e float32
			switch t := target(s, h); {
			case pred > t:
				e = 1
			case pred < t:
				e = -1
			}
			for j := range w.Grad {
				w.Grad[j] += e * feature(s, h, j)
			}
			b.Grad[0] += e
		}
		for j := range w.Grad {
			w.Grad[j] = w.Grad[j] / float32(count) * scale
		}
		b.Grad[0] = b.Grad[0] / float32(count) * scale
	}
}

// loss is the mean L1 loss over samples [from, from+count).
func (m *model) loss(from, count int) float64 {
	total := 0.0
	for h := range m.sizes {
		w, b := m.params[2*h], m.params[2*h+1]
		for s := from; s < from+count; s++ {
			pred := b.Data[0]
			for j, wj := range w.Data {
				pred += wj * feature(s, h, j)
			}
			total += math.Abs(float64(pred - target(s, h)))
		}
	}
	return total / float64(count)
}

// sameBits says where two parameter lists first differ in bits.
func sameBits(got, want []*parallel.Param) error {
	for i, p := range got {
		for j, v := range p.Data {
			if math.Float32bits(v) != math.Float32bits(want[i].Data[j]) {
				return fmt.Errorf("%s[%d] = %v, want %v", p.Name, j, v, want[i].Data[j])
			}
		}
	}
	return nil
}
