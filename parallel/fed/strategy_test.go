package fed

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/testlog"
	"github.com/ringo-ml/ringo/parallel"
)

func infos(n int) []ClientInfo {
	c := make([]ClientInfo, n)
	for i := range c {
		c[i] = ClientInfo{ID: uint64(100 + i), Name: names(n)[i]}
	}
	return c
}

// TestFedAvgSampling: FedAvg samples ⌈fraction·n⌉ distinct connected
// clients, at least MinFitClients, reproducibly from the generator.
func TestFedAvgSampling(t *testing.T) {
	connected := infos(10)
	for _, c := range []struct {
		fraction float64
		minFit   int
		want     int
	}{{0.3, 2, 3}, {0.25, 2, 3}, {0.1, 2, 2}, {0, 2, 10}, {1, 10, 10}} {
		f := &FedAvg{FractionFit: c.fraction, MinFitClients: c.minFit}
		a, err := f.ConfigureFit(1, connected, rand.New(rand.NewPCG(1, 2)))
		require.NoError(t, err)
		b, err := f.ConfigureFit(1, connected, rand.New(rand.NewPCG(1, 2)))
		require.NoError(t, err)
		assert.Equal(t, a, b, "the same generator state samples the same clients")
		require.Len(t, a.Clients, c.want)
		assert.Equal(t, c.minFit, a.MinResults)
		assert.True(t, slices.IsSortedFunc(a.Clients, compareClients))
		assert.Len(t, slices.CompactFunc(slices.Clone(a.Clients), func(x, y ClientInfo) bool { return x.ID == y.ID }), c.want)
		for _, p := range a.Clients {
			assert.Contains(t, connected, p)
		}
	}
	seen := map[uint64]bool{}
	rng := rand.New(rand.NewPCG(3, 4))
	f := &FedAvg{FractionFit: 0.2}
	for range 50 {
		p, err := f.ConfigureFit(1, connected, rng)
		require.NoError(t, err)
		for _, c := range p.Clients {
			seen[c.ID] = true
		}
	}
	assert.Len(t, seen, 10, "every client gets sampled sometimes")

	_, err := (&FedAvg{MinFitClients: 3}).ConfigureFit(1, infos(2), rng)
	require.ErrorIs(t, err, ErrTooFewClients)
	_, err = (&FedAvg{MinAvailableClients: 5}).ConfigureFit(1, infos(4), rng)
	require.ErrorIs(t, err, ErrTooFewClients)
	_, err = (&FedAvg{FractionFit: 1.5}).ConfigureFit(1, infos(4), rng)
	require.ErrorContains(t, err, "FractionFit")
}

// TestFedProx: the server sends μ with FedAvg's config; the client reads
// it back; the proximal gradient is μ·(w − global).
func TestFedProx(t *testing.T) {
	f := &FedProx{FedAvg: FedAvg{Config: map[string]string{"epochs": "2"}}, ProximalMu: 0.01}
	p, err := f.ConfigureFit(1, infos(3), rand.New(rand.NewPCG(1, 1)))
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"epochs": "2", ProximalMuKey: "0.01"}, p.Config)
	assert.Equal(t, map[string]string{"epochs": "2"}, f.Config, "the strategy's own config is not changed")
	mu, err := (&FitIns{Config: p.Config}).ProximalMu()
	require.NoError(t, err)
	assert.Equal(t, 0.01, mu)
	mu, err = (&FitIns{}).ProximalMu()
	require.NoError(t, err)
	assert.Zero(t, mu)
	_, err = (&FitIns{Config: map[string]string{ProximalMuKey: "-1"}}).ProximalMu()
	require.Error(t, err)
	_, err = (&FedProx{ProximalMu: -1}).ConfigureFit(1, infos(3), rand.New(rand.NewPCG(1, 1)))
	require.Error(t, err)

	grad := []float32{1, 1, 1}
	require.NoError(t, AddProximalGradient(grad, []float32{2, 0, 1}, []float32{1, 1, 1}, 0.5))
	assert.Equal(t, []float32{1.5, 0.5, 1}, grad)
	require.Error(t, AddProximalGradient(grad, []float32{1}, []float32{1, 2, 3}, 0.5))
}

// badPlan returns a plan the server must refuse.
type badPlan struct {
	plan func(connected []ClientInfo) FitPlan
	FedAvg
}

func (b *badPlan) ConfigureFit(round int, connected []ClientInfo, rng *rand.Rand) (FitPlan, error) {
	if len(connected) < 2 {
		return FitPlan{}, ErrTooFewClients
	}
	return b.plan(connected), nil
}

// TestServerRefusesBadPlansAndAggregates: a strategy that plans with
// clients that are not connected, twice the same client or an impossible
// minimum, or aggregates to weights of another length or to NaN, ends Run
// with an error that says so; a strategy's own error ends it too.
func TestServerRefusesBadPlansAndAggregates(t *testing.T) {
	for _, c := range []struct {
		name     string
		strategy Strategy
		want     string
	}{
		{"stranger", &badPlan{plan: func(c []ClientInfo) FitPlan {
			return FitPlan{Clients: []ClientInfo{{ID: 999}}, MinResults: 1}
		}}, "is not connected"},
		{"twice", &badPlan{plan: func(c []ClientInfo) FitPlan {
			return FitPlan{Clients: []ClientInfo{c[0], c[0]}, MinResults: 1}
		}}, "twice"},
		{"minimum", &badPlan{plan: func(c []ClientInfo) FitPlan {
			return FitPlan{Clients: c, MinResults: 3}
		}}, "3 results needed"},
		{"empty", &badPlan{plan: func(c []ClientInfo) FitPlan { return FitPlan{} }}, "no clients"},
		{"length", aggregateWith(func([]float32) []float32 { return make([]float32, 2) }), "returned 2 weights"},
		{"nan", aggregateWith(func(m []float32) []float32 { m[1] = float32(nanValue()); return m }), "weight 1 = NaN"},
		{"error", aggregateWith(nil), "strategy exploded"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := startServer(t, ServerConfig{Weights: exactWeights(3), Rounds: 1, Strategy: c.strategy})
			runClients(t, srv, names(2), ClientConfig{}, func(string) FitFunc { return exactFit(0, 1) })
			require.ErrorContains(t, srv.Run(testContext(t)), c.want)
		})
	}
}

type aggregateFunc struct {
	FedAvg
	f func([]float32) []float32
}

func aggregateWith(f func([]float32) []float32) *aggregateFunc { return &aggregateFunc{f: f} }

func (a *aggregateFunc) AggregateFit(_ int, _ []float32, agg *Aggregate) ([]float32, error) {
	if a.f == nil {
		return nil, errors.New("strategy exploded")
	}
	return a.f(agg.Mean), nil
}

func nanValue() float64 { var z float64; return z / z }

// TestServerLifecycle: Run may run once; Close ends a Run that waits for
// clients with ErrClosed; bad configurations are refused.
func TestServerLifecycle(t *testing.T) {
	srv := startServer(t, ServerConfig{Weights: exactWeights(3), Rounds: 1})
	done := make(chan error, 1)
	go func() { done <- srv.Run(testContext(t)) }()
	require.Eventually(t, srv.running.Load, testTimeout, time.Millisecond)
	require.ErrorContains(t, srv.Run(testContext(t)), "already")
	require.NoError(t, srv.Close())
	require.ErrorIs(t, <-done, ErrClosed)

	for _, c := range []struct {
		cfg  ServerConfig
		want string
	}{
		{ServerConfig{Token: testToken}, "initial weights"},
		{ServerConfig{Weights: []float32{1}}, "token"},
		{ServerConfig{Weights: []float32{1}, Token: testToken, Transport: "carrier pigeon"}, "unknown transport"},
		{ServerConfig{Weights: []float32{float32(nanValue())}, Token: testToken}, "initial weight 0"},
		{ServerConfig{Weights: []float32{1}, Token: testToken, Rounds: -1}, "-1 rounds"},
	} {
		c.cfg.Addr = "127.0.0.1:0"
		_, err := NewServer(context.Background(), c.cfg)
		assert.ErrorContains(t, err, c.want)
	}
	for _, c := range []struct {
		cfg  ClientConfig
		want string
	}{
		{ClientConfig{Token: testToken}, "Fit"},
		{ClientConfig{Fit: exactFit(0, 1)}, "token"},
		{ClientConfig{Fit: exactFit(0, 1), Token: testToken, Transport: TLS}, "fingerprint"},
		{ClientConfig{Fit: exactFit(0, 1), Token: testToken, Name: string(make([]byte, 300))}, "name"},
	} {
		_, err := NewClient(c.cfg)
		assert.ErrorContains(t, err, c.want)
	}
}

// TestRequireSecure: a client that requires secure aggregation refuses a
// round in the clear, and the server drops it with its reason.
func TestRequireSecure(t *testing.T) {
	var logs testlog.Buffer
	srv := startServer(t, ServerConfig{Weights: exactWeights(3), Rounds: 1, MaxAttempts: 1, Strategy: &FedAvg{MinFitClients: 2}, Logger: logs.Logger(slog.LevelDebug)})
	runClients(t, srv, names(2), ClientConfig{RequireSecure: true}, func(string) FitFunc { return exactFit(0, 1) })
	require.ErrorIs(t, srv.Run(testContext(t)), ErrRoundFailed)
	assert.Contains(t, logs.String(), "requires secure aggregation")
}

// TestWeightsOfParams: Weights and SetWeights are inverse, in parameter
// order; a vector of another length is refused.
func TestWeightsOfParams(t *testing.T) {
	params := []*parallel.Param{{Name: "a", Data: []float32{1, 2}}, {Name: "b", Data: []float32{3}}}
	w := Weights(params)
	assert.Equal(t, []float32{1, 2, 3}, w)
	require.NoError(t, SetWeights(params, []float32{4, 5, 6}))
	assert.Equal(t, []float32{4, 5}, params[0].Data)
	assert.Equal(t, []float32{6}, params[1].Data)
	assert.Equal(t, []float32{1, 2, 3}, w, "Weights copies")
	require.ErrorContains(t, SetWeights(params, []float32{1}), "1 weights for parameters of 3")
}

// TestServerLimits: a full server turns a client away (it retries later);
// a model too big for one message is refused at once.
func TestServerLimits(t *testing.T) {
	srv := startServer(t, ServerConfig{Weights: exactWeights(3), Rounds: 1, MaxClients: 1})
	runClients(t, srv, []string{"first"}, ClientConfig{}, func(string) FitFunc { return exactFit(0, 1) })
	waitJoined(t, srv, 1)
	ctx := testContext(t)
	st, err := dial(ctx, TCP, srv.Addr(), "", nil, testToken, testJob)
	require.NoError(t, err)
	defer st.Close()
	w := newWire(st)
	require.NoError(t, w.send(&joinMsg{Name: "second"}, testTimeout))
	m, err := w.recv(func(msgKind) int { return 1 << 20 })
	require.NoError(t, err)
	require.IsType(t, &byeMsg{}, m)
	assert.False(t, m.(*byeMsg).Over)
	assert.Contains(t, m.(*byeMsg).Reason, "as many clients")

	_, err = NewServer(context.Background(), ServerConfig{Addr: "127.0.0.1:0", Token: testToken,
		Weights: make([]float32, maxWeights(true)+1), Secure: &SecureAggregation{}})
	require.ErrorContains(t, err, "does not fit in one message")
}
