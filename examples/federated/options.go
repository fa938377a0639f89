package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/ringo-ml/ringo/internal/mnist"
	"github.com/ringo-ml/ringo/parallel/fed"
)

// options are the command's flags.
type options struct {
	mode         string
	data         string
	clients      int
	rounds       int
	fraction     float64
	minFit       int
	dropout      float64
	secure       bool
	epochs       int
	batch        int
	lr           float64
	mu           float64
	layers       []int // the MLP's sizes, input to output (-hidden)
	seed         uint64
	skew         float64
	transport    string
	procs        bool
	trainSamples int
	roundTimeout time.Duration
	target       float64
	dataDir      string
	verbose      bool

	// A client process (-procs starts them): which client, and where the
	// server is. The token comes in the environment (tokenEnv).
	role        string
	name        string
	server      string
	fingerprint string
}

// tokenEnv carries the job token to client processes, never on a command
// line.
const tokenEnv = "FEDERATED_TOKEN"

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("federated", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: federated [flags]

Trains an MLP on MNIST by federated averaging (package parallel/fed): a server
and -clients clients, each holding a share of the training set that is mostly
two digits (-data noniid) or a uniform share (-data iid). In every round a
random -dropout fraction of the sampled clients leave in the middle of their
training and join again. -mode central trains the same model on all the data
in one process, for comparison.

Prints "round=R test_accuracy=A ..." after every round (central: every epoch).

`)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.mode, "mode", "fed", "fed (federated) or central (one process, all the data; -rounds epochs)")
	fs.StringVar(&o.data, "data", "noniid", "how the training set is split over the clients: noniid or iid")
	fs.IntVar(&o.clients, "clients", 10, "number of clients")
	fs.IntVar(&o.rounds, "rounds", 30, "federated rounds (central: epochs)")
	fs.Float64Var(&o.fraction, "fraction", 1, "fraction of the connected clients sampled each round")
	fs.IntVar(&o.minFit, "min-fit", 5, "fewest clients sampled, and fewest results a round completes with")
	fs.Float64Var(&o.dropout, "dropout", 0.3, "fraction of each round's sampled clients that drop out mid-round")
	fs.BoolVar(&o.secure, "secure", true, "secure aggregation (the server sees only the sum of the updates)")
	fs.IntVar(&o.epochs, "epochs", 1, "local epochs per round")
	fs.IntVar(&o.batch, "batch", 32, "local batch size")
	fs.Float64Var(&o.lr, "lr", 0.05, "local SGD learning rate")
	fs.Float64Var(&o.mu, "mu", 0, "FedProx proximal term μ (0: FedAvg)")
	hidden := fs.String("hidden", "200", "hidden layer sizes, comma-separated")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the model, the split, the sampling and the dropouts")
	fs.Float64Var(&o.skew, "skew", 0.8, "noniid: the fraction of each client's samples that are of its two digits")
	fs.StringVar(&o.transport, "transport", "tcp", "tcp, tls or quic")
	fs.BoolVar(&o.procs, "procs", false, "run the clients as processes (default: goroutines)")
	fs.IntVar(&o.trainSamples, "train-samples", 0, "use the first N training images only (0: all 60000), for quick runs")
	fs.DurationVar(&o.roundTimeout, "round-timeout", 10*time.Minute, "longest wait for a round's updates")
	fs.Float64Var(&o.target, "target", 0.95, "report the first round whose test accuracy reaches this")
	fs.StringVar(&o.dataDir, "data-dir", "", "directory with the MNIST files (default: the GoMNIST module in the Go module cache)")
	fs.BoolVar(&o.verbose, "v", false, "log the server's and clients' notes (dropped clients and why)")
	fs.StringVar(&o.role, "role", "", "internal: client, for the processes -procs starts")
	fs.StringVar(&o.name, "name", "", "internal: the client's name (cNN)")
	fs.StringVar(&o.server, "server", "", "internal: the server's address")
	fs.StringVar(&o.fingerprint, "fingerprint", "", "internal: the server's certificate fingerprint")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	var err error
	o.layers, err = mnist.MLPSizes(*hidden)
	check(err == nil, "-hidden %q: want positive sizes separated by commas", *hidden)
	check(o.mode == "fed" || o.mode == "central", "-mode %q: want fed or central", o.mode)
	check(o.data == "noniid" || o.data == "iid", "-data %q: want noniid or iid", o.data)
	check(o.clients >= 2, "-clients %d: want 2 or more", o.clients)
	check(o.rounds >= 1, "-rounds %d: want 1 or more", o.rounds)
	check(o.fraction > 0 && o.fraction <= 1, "-fraction %v: want (0, 1]", o.fraction)
	check(o.minFit >= 2 && o.minFit <= o.clients, "-min-fit %d: want 2 to -clients", o.minFit)
	check(o.dropout >= 0 && o.dropout < 1, "-dropout %v: want [0, 1)", o.dropout)
	check(o.epochs >= 1, "-epochs %d: want 1 or more", o.epochs)
	check(o.batch >= 1, "-batch %d: want 1 or more", o.batch)
	check(o.lr > 0, "-lr %v: want a positive rate", o.lr)
	check(o.mu >= 0, "-mu %v: want 0 or more", o.mu)
	check(o.skew >= 0 && o.skew <= 1, "-skew %v: want [0, 1]", o.skew)
	check(fed.Transport(o.transport) == fed.TCP || fed.Transport(o.transport) == fed.TLS || fed.Transport(o.transport) == fed.QUIC,
		"-transport %q: want tcp, tls or quic", o.transport)
	check(o.trainSamples >= 0 && o.trainSamples <= 60000, "-train-samples %d: want 0 (all) to 60000", o.trainSamples)
	check(o.trainSamples == 0 || o.trainSamples >= o.clients, "-train-samples %d: fewer than one per client", o.trainSamples)
	check(o.roundTimeout > 0, "-round-timeout %v: want a positive duration", o.roundTimeout)
	check(o.role == "" || o.role == "client", "-role %q: want client", o.role)
	return o, errors.Join(errs...)
}

// clientName is the name of client i.
func clientName(i int) string { return fmt.Sprintf("c%02d", i) }

// clientIndex is the index in a client's name.
func clientIndex(name string) (int, error) {
	i, err := strconv.Atoi(strings.TrimPrefix(name, "c"))
	if err != nil || !strings.HasPrefix(name, "c") || i < 0 {
		return 0, fmt.Errorf("bad client name %q", name)
	}
	return i, nil
}
