package fed

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
)

// ClientInfo is a connected client as the server knows it.
type ClientInfo struct {
	// ID is the server's name for this connection: unique, never reused
	// by one server, and new when the client reconnects.
	ID uint64
	// Name is what the client calls itself (ClientConfig.Name); it stays
	// the same across reconnections but need not be unique.
	Name string
}

// compareClients orders clients by name, then id: the order of the lists
// a Strategy gets and of FedAvg's sums, stable across reconnections and
// server restarts when names are unique.
func compareClients(a, b ClientInfo) int {
	if c := cmp.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}

func sortClients(c []ClientInfo) { slices.SortFunc(c, compareClients) }

func (c ClientInfo) String() string { return fmt.Sprintf("%s#%d", c.Name, c.ID) }

// FitPlan is a Strategy's plan of a round.
type FitPlan struct {
	// Clients are the clients asked to train, a subset of those connected.
	Clients []ClientInfo
	// Config is sent to each of them with the global weights.
	Config map[string]string
	// MinResults is the fewest results the round can complete with; with
	// fewer the server tries the round again.
	MinResults int
}

// FitResult is one client's answer in the clear.
type FitResult struct {
	Client   ClientInfo
	Weights  []float32 // its trained weights
	Examples int       // the number of samples it trained on
	Metrics  map[string]float64
}

// Failure is a sampled client that gave no (usable) result.
type Failure struct {
	Client ClientInfo
	Reason string
}

// Aggregate is what a round produced.
type Aggregate struct {
	// Mean is the clients' weights averaged, each weighted by its number
	// of examples: Σ n_i·w_i / Σ n_i. In the clear it is computed in
	// float64, summing the clients in ascending (Name, ID) order, and
	// rounded to float32 once. Under secure aggregation it is
	// g + Σ n_i·q_i·2^−ScaleBits / Σ n_i, where q_i is client i's update
	// w_i − g in fixed point (see SecureAggregation).
	Mean []float32
	// Examples is Σ n_i.
	Examples int64
	// Clients are those whose results are in Mean.
	Clients []ClientInfo
	// Results are the individual results, in the order of Clients; nil
	// under secure aggregation, where the server never sees them.
	Results []FitResult
	// Failures are the sampled clients whose results are not in Mean.
	Failures []Failure
}

// Strategy decides which clients train in a round and how the round's
// results become the next global weights (Flower's configure_fit and
// aggregate_fit).
type Strategy interface {
	// ConfigureFit plans round (1, 2, ...) among the clients connected
	// now, sorted by (Name, ID); rng is the server's sampling generator
	// (checkpointed with the model). ErrTooFewClients makes the server
	// wait for more clients and ask again.
	ConfigureFit(round int, connected []ClientInfo, rng *rand.Rand) (FitPlan, error)
	// AggregateFit returns the next global weights from the current ones
	// and the round's aggregate (neither may be kept or modified). It
	// may return agg.Mean.
	AggregateFit(round int, global []float32, agg *Aggregate) ([]float32, error)
}

// ErrTooFewClients means a round cannot start with the clients connected.
var ErrTooFewClients = errors.New("fed: too few clients connected")

// FedAvg is federated averaging (McMahan et al. 2017): each round samples
// a fraction of the connected clients and replaces the global weights by
// the mean of their trained weights, weighted by their sample counts.
type FedAvg struct {
	// FractionFit is the fraction of the connected clients sampled each
	// round (rounded up). Default 1: all.
	FractionFit float64
	// MinFitClients is the fewest clients sampled, and the fewest results
	// a round completes with. Default 2.
	MinFitClients int
	// MinAvailableClients is the fewest connected clients a round starts
	// with. Default MinFitClients.
	MinAvailableClients int
	// Config is sent to the sampled clients.
	Config map[string]string
}

func (f *FedAvg) minFit() int {
	if f.MinFitClients > 0 {
		return f.MinFitClients
	}
	return 2
}

// ConfigureFit samples max(⌈FractionFit·connected⌉, MinFitClients) clients
// uniformly without replacement.
func (f *FedAvg) ConfigureFit(_ int, connected []ClientInfo, rng *rand.Rand) (FitPlan, error) {
	fraction := f.FractionFit
	if fraction == 0 {
		fraction = 1
	}
	if !(fraction > 0 && fraction <= 1) {
		return FitPlan{}, fmt.Errorf("fed: FractionFit %g is not in (0, 1]", f.FractionFit)
	}
	minFit := f.minFit()
	if len(connected) < max(minFit, f.MinAvailableClients) {
		return FitPlan{}, fmt.Errorf("%w: %d connected, need %d", ErrTooFewClients, len(connected), max(minFit, f.MinAvailableClients))
	}
	n := max(int(math.Ceil(fraction*float64(len(connected)))), minFit)
	picked := make([]ClientInfo, 0, n)
	for _, i := range rng.Perm(len(connected))[:n] {
		picked = append(picked, connected[i])
	}
	sortClients(picked)
	return FitPlan{Clients: picked, Config: f.Config, MinResults: minFit}, nil
}

// AggregateFit returns the weighted mean.
func (f *FedAvg) AggregateFit(_ int, _ []float32, agg *Aggregate) ([]float32, error) {
	return agg.Mean, nil
}

// ProximalMuKey is the config key FedProx sends its μ under.
const ProximalMuKey = "proximal_mu"

// FedProx is FedAvg whose clients add the proximal term μ/2·‖w − w_global‖²
// to their local loss (Li et al. 2020), which keeps clients with very
// different data from drifting apart. The server only sends μ (as
// Config[ProximalMuKey]); the clients apply it: FitIns.ProximalMu reads it
// and AddProximalGradient adds the term's gradient.
type FedProx struct {
	FedAvg
	ProximalMu float64
}

// ConfigureFit is FedAvg's, with μ in the config.
func (f *FedProx) ConfigureFit(round int, connected []ClientInfo, rng *rand.Rand) (FitPlan, error) {
	if !(f.ProximalMu >= 0) || math.IsInf(f.ProximalMu, 0) {
		return FitPlan{}, fmt.Errorf("fed: proximal mu %g is not a non-negative number", f.ProximalMu)
	}
	plan, err := f.FedAvg.ConfigureFit(round, connected, rng)
	if err != nil {
		return plan, err
	}
	cfg := make(map[string]string, len(plan.Config)+1)
	for k, v := range plan.Config {
		cfg[k] = v
	}
	cfg[ProximalMuKey] = strconv.FormatFloat(f.ProximalMu, 'g', -1, 64)
	plan.Config = cfg
	return plan, nil
}

// AddProximalGradient adds the gradient of FedProx's proximal term,
// μ·(w − global), to grad, for the weights w of one parameter and the
// matching slice of the global weights.
func AddProximalGradient(grad, w, global []float32, mu float32) error {
	if len(grad) != len(w) || len(w) != len(global) {
		return fmt.Errorf("fed: proximal gradient of %d gradients, %d weights, %d global weights", len(grad), len(w), len(global))
	}
	if mu == 0 {
		return nil
	}
	for i := range grad {
		grad[i] += mu * (w[i] - global[i])
	}
	return nil
}
