// Command federated trains an MLP on MNIST by federated averaging with
// package parallel/fed: a server, and clients that each hold a share of
// the training set that never leaves them, mostly two digits per client.
// In every round a random 30% of the sampled clients drop out in the
// middle of their training (and join again later); with secure
// aggregation (the default) the server sees only the sum of the updates.
//
//	go run ./examples/federated                     10 non-IID clients as goroutines, secure aggregation
//	go run ./examples/federated -secure=false       updates in the clear
//	go run ./examples/federated -data iid           the same, each client a uniform share
//	go run ./examples/federated -procs              the clients as processes
//	go run ./examples/federated -mode central       the same model trained on all the data in one process
//
// The server evaluates the global model on the 10,000 test images before
// the first round and after each, and prints the accuracy.
package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/ringo-ml/ringo/internal/cli"
	"github.com/ringo-ml/ringo/internal/mnist"
)

func main() { cli.Main(run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	return cli.Run("federated", stderr, err, func() error {
		train, test, err := mnist.Load(o.dataDir)
		if err != nil {
			return err
		}
		switch {
		case o.role == "client":
			return runClientProcess(ctx, o, train, stderr)
		case o.mode == "central":
			return runCentral(ctx, o, train, test, stdout, stderr)
		}
		return runFederated(ctx, o, train, test, stdout, stderr)
	})
}

// runCentral trains the same model on all the training data (or
// -train-samples of it) in one process, -rounds epochs, with the clients'
// batch size and learning rate: the reference the federated runs are
// compared with.
func runCentral(ctx context.Context, o options, train, test *mnist.Set, stdout, stderr io.Writer) error {
	l, err := newLearner(&o)
	if err != nil {
		return err
	}
	n := train.Len()
	if o.trainSamples > 0 {
		n = o.trainSamples
	}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	one := o
	one.epochs = 1
	fmt.Fprintf(stderr, "federated: centralized training, %d samples, MLP %v, batch %d, lr %g\n", n, o.layers, o.batch, o.lr)
	start := time.Now()
	for e := 1; e <= o.rounds; e++ {
		_, _, err := l.trainEpochs(&one, train, all, 1<<19|uint64(e), nil, 0, func(int, int) error { return ctx.Err() })
		if err != nil {
			return err
		}
		acc, err := l.accuracy(ctx, test)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "epoch=%d test_accuracy=%.4f seconds=%.1f\n", e, acc, time.Since(start).Seconds())
	}
	return nil
}
