package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringo-ml/ringo/internal/mnist"
	"github.com/ringo-ml/ringo/parallel/fed"
)

const (
	jobName = "federated-mnist"
	// dropKey is the config key under which the example's strategy names
	// the clients that are to drop out of a round.
	dropKey = "example.drop"
	// dropStream is the dropout generator's stream.
	dropStream = 1 << 43
)

// errDroppedOut is how a client that drops out ends its training.
var errDroppedOut = errors.New("dropped out on purpose")

// dropouts wraps a strategy: it names a fraction of each attempt's
// sampled clients in the config, and those clients leave in the middle of
// their training (their connection closes) and join again. At most
// len(Clients) − MinResults are named, so that a round can still complete.
type dropouts struct {
	fed.Strategy
	fraction float64
	rng      *mrand.Rand
}

func (d *dropouts) ConfigureFit(round int, connected []fed.ClientInfo, rng *mrand.Rand) (fed.FitPlan, error) {
	plan, err := d.Strategy.ConfigureFit(round, connected, rng)
	if err != nil {
		return plan, err
	}
	k := min(int(math.Round(d.fraction*float64(len(plan.Clients)))), len(plan.Clients)-plan.MinResults)
	var names []string
	for _, i := range d.rng.Perm(len(plan.Clients))[:max(k, 0)] {
		names = append(names, plan.Clients[i].Name)
	}
	slices.Sort(names)
	cfg := maps.Clone(plan.Config)
	if cfg == nil {
		cfg = map[string]string{}
	}
	cfg[dropKey] = strings.Join(names, ",")
	plan.Config = cfg
	return plan, nil
}

// runFederated runs the server and its clients, and prints the test
// accuracy after every round.
func runFederated(ctx context.Context, o options, train, test *mnist.Set, stdout, stderr io.Writer) error {
	token := make([]byte, 32)
	if _, err := rand.Read(token); err != nil {
		return err
	}
	shards := split(&o, train)
	describeSplit(stderr, &o, train, shards)

	eval, err := newLearner(&o)
	if err != nil {
		return err
	}
	// Every round starts once all the clients are connected (those that
	// dropped out of the last one join again): every round samples alike.
	var strategy fed.Strategy = &fed.FedAvg{FractionFit: o.fraction, MinFitClients: o.minFit, MinAvailableClients: o.clients}
	if o.mu > 0 {
		strategy = &fed.FedProx{FedAvg: *strategy.(*fed.FedAvg), ProximalMu: o.mu}
	}
	strategy = &dropouts{Strategy: strategy, fraction: o.dropout, rng: mrand.New(mrand.NewPCG(o.seed, dropStream))}
	cfg := fed.ServerConfig{
		Addr:         "127.0.0.1:0",
		Transport:    fed.Transport(o.transport),
		Token:        token,
		Job:          jobName,
		Weights:      eval.weights(),
		Rounds:       o.rounds,
		Strategy:     strategy,
		RoundTimeout: o.roundTimeout,
		Seed:         o.seed,
		Logger:       logger(&o, stderr),
		Evaluate: func(ctx context.Context, _ int, w []float32) (map[string]float64, error) {
			if err := eval.setWeights(w); err != nil {
				return nil, err
			}
			acc, err := eval.accuracy(ctx, test)
			return map[string]float64{"test_accuracy": acc}, err
		},
	}
	if o.secure {
		cfg.Secure = &fed.SecureAggregation{}
	}
	start := time.Now()
	reached := 0
	cfg.OnRound = func(s fed.RoundSummary) {
		acc := s.Metrics["test_accuracy"]
		fmt.Fprintf(stdout, "round=%d test_accuracy=%.4f clients=%d dropped=%d attempts=%d seconds=%.1f\n",
			s.Round, acc, len(s.Clients), len(s.Failures), s.Attempts, time.Since(start).Seconds())
		if reached == 0 && s.Round > 0 && acc >= o.target {
			reached = s.Round
		}
	}
	srv, err := fed.NewServer(ctx, cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Fprintf(stderr, "federated: %s data, %d clients, %.0f%% sampled, %.0f%% of them dropping out, secure aggregation %v, %s, MLP %v, %d local epoch(s), batch %d, lr %g\n",
		o.data, o.clients, 100*o.fraction, 100*o.dropout, o.secure, o.transport, o.layers, o.epochs, o.batch, o.lr)

	cctx, stopClients := context.WithCancel(ctx)
	defer stopClients()
	var wg sync.WaitGroup
	errs := make([]error, o.clients)
	for i := range o.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if o.procs {
				errs[i] = spawnClient(cctx, &o, i, srv, token, stderr)
				return
			}
			ccfg := clientConfig(&o, clientName(i), srv.Addr(), srv.Fingerprint(), token, stderr)
			errs[i] = newClient(&o, i, train, shards[i]).run(cctx, ccfg)
		}()
	}
	runErr := srv.Run(ctx)
	if runErr != nil {
		stopClients()
	}
	wg.Wait()
	if runErr != nil {
		return runErr
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clients: %w", err)
	}
	final := srv.History()
	last := final[len(final)-1]
	fmt.Fprintf(stdout, "final test_accuracy=%.4f after %d rounds in %.0fs", last.Metrics["test_accuracy"], last.Round, time.Since(start).Seconds())
	if reached > 0 {
		fmt.Fprintf(stdout, "; first reached %.2f at round %d\n", o.target, reached)
	} else {
		fmt.Fprintf(stdout, "; never reached %.2f\n", o.target)
	}
	return nil
}

func logger(o *options, stderr io.Writer) *slog.Logger {
	if !o.verbose {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(stderr, nil))
}

// describeSplit prints how many samples each client holds and which
// fraction of them are of its two main digits.
func describeSplit(w io.Writer, o *options, train *mnist.Set, shards [][]int) {
	var parts []string
	for c, s := range shards {
		main := 0
		m := mainDigits(c)
		for _, i := range s {
			if y := train.Labels[i]; y == m[0] || y == m[1] {
				main++
			}
		}
		parts = append(parts, fmt.Sprintf("%s:%d(%d%%:%d,%d)", clientName(c), len(s), 100*main/max(len(s), 1), m[0], m[1]))
	}
	fmt.Fprintf(w, "federated: %s split, samples per client (%% of its two digits): %s\n", o.data, strings.Join(parts, " "))
}

func clientConfig(o *options, name, addr, fingerprint string, token []byte, stderr io.Writer) fed.ClientConfig {
	return fed.ClientConfig{
		Addr:              addr,
		Transport:         fed.Transport(o.transport),
		ServerFingerprint: fingerprint,
		Token:             token,
		Job:               jobName,
		Name:              name,
		RequireSecure:     o.secure,
		Logger:            logger(o, stderr),
	}
}

// client is one federated client: its share of the data and its model.
type client struct {
	o     *options
	index int
	name  string
	train *mnist.Set
	shard []int
	l     *learner

	leave context.CancelFunc // ends the current connection's Run
	left  atomic.Bool        // the client dropped out on purpose
}

func newClient(o *options, i int, train *mnist.Set, shard []int) *client {
	return &client{o: o, index: i, name: clientName(i), train: train, shard: shard}
}

// run serves the server until it ends training, joining again after each
// planned dropout.
func (c *client) run(ctx context.Context, cfg fed.ClientConfig) error {
	l, err := newLearner(c.o)
	if err != nil {
		return err
	}
	c.l = l
	cfg.Fit = c.fit
	for {
		life, leave := context.WithCancel(ctx)
		c.leave = leave
		client, err := fed.NewClient(cfg)
		if err != nil {
			leave()
			return err
		}
		err = client.Run(life)
		leave()
		switch {
		case err == nil:
			return nil // training is over
		case ctx.Err() != nil:
			return ctx.Err()
		case c.left.Swap(false):
			continue // a planned dropout: join again
		default:
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
}

// fit trains the global weights on the client's share for -epochs passes,
// or drops out halfway when the round's config names this client.
func (c *client) fit(ctx context.Context, ins *fed.FitIns) (fed.FitRes, error) {
	if err := c.l.setWeights(ins.Weights); err != nil {
		return fed.FitRes{}, err
	}
	mu, err := ins.ProximalMu()
	if err != nil {
		return fed.FitRes{}, err
	}
	drop := slices.Contains(strings.Split(ins.Config[dropKey], ","), c.name)
	stream := uint64(c.index)<<20 | uint64(ins.Round)
	_, loss, err := c.l.trainEpochs(c.o, c.train, c.shard, stream, ins.Weights, float32(mu), func(step, steps int) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if drop && step == steps/2 {
			c.left.Store(true)
			c.leave() // the connection closes: the server sees the client vanish
			return errDroppedOut
		}
		return nil
	})
	if err != nil {
		return fed.FitRes{}, err
	}
	return fed.FitRes{Weights: c.l.weights(), Examples: len(c.shard), Metrics: map[string]float64{"train_loss": loss}}, nil
}

// spawnClient runs client i as a process of this program, and waits for it.
func spawnClient(ctx context.Context, o *options, i int, srv *fed.Server, token []byte, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	args := append(slices.Clone(os.Args[1:]), "-role", "client", "-name", clientName(i), "-server", srv.Addr(), "-fingerprint", srv.Fingerprint())
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(), tokenEnv+"="+hex.EncodeToString(token))
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Run(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("client process %s: %w", clientName(i), err)
	}
	return nil
}

// runClientProcess is one client in a process of its own (-role client).
func runClientProcess(ctx context.Context, o options, train *mnist.Set, stderr io.Writer) error {
	token, err := hex.DecodeString(os.Getenv(tokenEnv))
	if err != nil || len(token) == 0 {
		return fmt.Errorf("a client process needs the job token in $%s", tokenEnv)
	}
	i, err := clientIndex(o.name)
	if err != nil {
		return err
	}
	if i >= o.clients {
		return fmt.Errorf("client %s of %d", o.name, o.clients)
	}
	shards := split(&o, train)
	cfg := clientConfig(&o, o.name, o.server, o.fingerprint, token, stderr)
	return newClient(&o, i, train, shards[i]).run(ctx, cfg)
}
