package fed

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"math/big"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/testlog"
	"github.com/ringo-ml/ringo/transport"
)

// exactWeights are initial weights with few significant bits, so that
// sums and means of them and of exactFit's updates are exact.
func exactWeights(d int) []float32 {
	w := make([]float32, d)
	for j := range w {
		w[j] = float32(j%11)/4 - 1
	}
	return w
}

// exactDelta is client i's update of element j in round r: a multiple of
// 1/64, exact in float32 and in the fixed point.
func exactDelta(i, j, r int) float32 { return float32((j+r)%5-2) * float32(i+1) / 64 }

// exactFit trains by adding exactDelta; it reports examples samples.
func exactFit(i, examples int) FitFunc {
	return func(_ context.Context, ins *FitIns) (FitRes, error) {
		for j := range ins.Weights {
			ins.Weights[j] += exactDelta(i, j, ins.Round)
		}
		return FitRes{Weights: ins.Weights, Examples: examples}, nil
	}
}

// exactMean is the weighted mean of the clients' weights computed exactly
// (rationals), then rounded once to float32; it says whether that rounding
// was exact.
func exactMean(global []float32, clients []int, examples []int, round int) ([]float32, bool) {
	out := make([]float32, len(global))
	allExact := true
	for j, g := range global {
		sum, total := new(big.Rat), new(big.Rat)
		for k, i := range clients {
			w := new(big.Rat).SetFloat64(float64(g + exactDelta(i, j, round)))
			n := new(big.Rat).SetInt64(int64(examples[k]))
			sum.Add(sum, w.Mul(w, n))
			total.Add(total, n)
		}
		v, exact := sum.Quo(sum, total).Float32()
		out[j], allExact = v, allExact && exact
	}
	return out, allExact
}

func requireBitwise(t *testing.T, want, got []float32) {
	t.Helper()
	require.Len(t, got, len(want))
	for j := range want {
		if math.Float32bits(want[j]) != math.Float32bits(got[j]) {
			t.Fatalf("element %d: got %g (%#08x), want %g (%#08x)", j, got[j], math.Float32bits(got[j]), want[j], math.Float32bits(want[j]))
		}
	}
}

// TestFedAvgIsTheWeightedMean: two rounds of 4 clients whose sample counts
// sum to 16, so that the weighted mean of exactly representable weights is
// exact: the server's weights equal it bitwise, in the clear and under
// secure aggregation, on every transport.
func TestFedAvgIsTheWeightedMean(t *testing.T) {
	examples := []int{1, 3, 5, 7}
	const d, rounds = 37, 2
	for _, tr := range []Transport{TCP, TLS, QUIC} {
		for _, secure := range []bool{false, true} {
			t.Run(string(tr)+"/secure="+strconv.FormatBool(secure), func(t *testing.T) {
				cfg := ServerConfig{
					Transport: tr,
					Weights:   exactWeights(d),
					Rounds:    rounds,
					Strategy:  &FedAvg{MinFitClients: len(examples)},
				}
				if secure {
					cfg.Secure = &SecureAggregation{}
				}
				srv := startServer(t, cfg)
				cs := runClients(t, srv, names(len(examples)), ClientConfig{RequireSecure: secure}, func(name string) FitFunc {
					i, _ := strconv.Atoi(name[1:])
					return exactFit(i, examples[i])
				})
				require.NoError(t, srv.Run(testContext(t)))
				for name, err := range cs.wait() {
					assert.NoError(t, err, name) // the server said goodbye
				}

				want := exactWeights(d)
				for r := 1; r <= rounds; r++ {
					var exact bool
					want, exact = exactMean(want, []int{0, 1, 2, 3}, examples, r)
					require.True(t, exact)
				}
				requireBitwise(t, want, srv.Weights())
				h := srv.History()
				require.Len(t, h, rounds)
				for r, sum := range h {
					assert.Equal(t, r+1, sum.Round)
					assert.Equal(t, 1, sum.Attempts)
					assert.Len(t, sum.Clients, len(examples))
					assert.Equal(t, int64(16), sum.Examples)
					assert.Empty(t, sum.Failures)
				}
			})
		}
	}
}

// TestWeightedMeanSummationOrder: with weights whose mean is not exact,
// the clear aggregate is the float64 sum in ascending client order,
// divided, rounded to float32: bitwise.
func TestWeightedMeanSummationOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	const d = 1000
	results := make([]FitResult, 5)
	for i := range results {
		w := make([]float32, d)
		for j := range w {
			w[j] = float32(rng.NormFloat64())
		}
		results[i] = FitResult{Weights: w, Examples: 1 + rng.IntN(1000)}
	}
	got := make([]float32, d)
	total := weightedMean(got, results)
	want := make([]float32, d)
	var n int64
	for _, r := range results {
		n += int64(r.Examples)
	}
	for j := range want {
		acc := 0.0
		for _, r := range results {
			acc += float64(r.Examples) * float64(r.Weights[j])
		}
		want[j] = float32(acc / float64(n))
	}
	assert.Equal(t, n, total)
	requireBitwise(t, want, got)
}

// TestSecureWithinQuantisation: with updates that are not multiples of
// the fixed point's step, the secure aggregate differs from the clear one
// by at most the documented bound, 2^−(ScaleBits+1) plus one float32
// rounding, and is not equal to it everywhere (the test would prove
// nothing if the quantisation were invisible).
func TestSecureWithinQuantisation(t *testing.T) {
	const d, clients = 500, 5
	global := make([]float32, d)
	rng := rand.New(rand.NewPCG(3, 4))
	for j := range global {
		global[j] = float32(rng.NormFloat64())
	}
	updates := make([][]float32, clients)
	examples := make([]int, clients)
	for i := range updates {
		updates[i] = make([]float32, d)
		for j := range updates[i] {
			updates[i][j] = global[j] + float32(rng.NormFloat64()*0.1)
		}
		examples[i] = 10 + rng.IntN(100)
	}
	fit := func(name string) FitFunc {
		i, _ := strconv.Atoi(name[1:])
		return func(context.Context, *FitIns) (FitRes, error) {
			return FitRes{Weights: append([]float32(nil), updates[i]...), Examples: examples[i]}, nil
		}
	}
	run := func(secure *SecureAggregation) []float32 {
		srv := startServer(t, ServerConfig{Weights: global, Rounds: 1, Strategy: &FedAvg{MinFitClients: clients}, Secure: secure})
		runClients(t, srv, names(clients), ClientConfig{}, fit)
		require.NoError(t, srv.Run(testContext(t)))
		return srv.Weights()
	}
	for _, bits := range []int{12, 24} {
		plain := run(nil)
		secure := run(&SecureAggregation{ScaleBits: bits})
		bound := math.Ldexp(1, -(bits + 1))
		differ := 0
		for j := range plain {
			ulp := float64(math.Nextafter32(float32(math.Abs(float64(plain[j]))), float32(math.Inf(1))) - float32(math.Abs(float64(plain[j]))))
			diff := math.Abs(float64(secure[j]) - float64(plain[j]))
			require.LessOrEqual(t, diff, bound+ulp, "element %d, %d bits", j, bits)
			if diff != 0 {
				differ++
			}
		}
		if bits == 12 {
			assert.Greater(t, differ, d/2, "12-bit quantisation should show")
		}
	}
}

// TestRestartResumes: a server stopped after round 2 of 4 and started
// again on the same address and checkpoint resumes at round 3; its
// clients reconnect by themselves; the final weights equal an
// uninterrupted run's bitwise.
func TestRestartResumes(t *testing.T) {
	const d, rounds, n = 16, 4, 3
	examples := []int{2, 4, 2}
	fit := func(name string) FitFunc {
		i, _ := strconv.Atoi(name[1:])
		return exactFit(i, examples[i])
	}
	// Uninterrupted.
	ref := startServer(t, ServerConfig{Weights: exactWeights(d), Rounds: rounds, Strategy: &FedAvg{MinFitClients: n}})
	runClients(t, ref, names(n), ClientConfig{}, fit)
	require.NoError(t, ref.Run(testContext(t)))
	want := ref.Weights()

	path := filepath.Join(t.TempDir(), "server.ckpt")
	ctx, stop := context.WithCancel(testContext(t))
	cfg := ServerConfig{
		Weights:        exactWeights(d),
		Rounds:         rounds,
		Strategy:       &FedAvg{MinFitClients: n},
		CheckpointPath: path,
		OnRound: func(s RoundSummary) {
			if s.Round == 2 {
				stop()
			}
		},
	}
	first := startServer(t, cfg)
	cs := runClients(t, first, names(n), ClientConfig{}, fit)
	require.ErrorIs(t, first.Run(ctx), context.Canceled)
	require.Equal(t, 2, first.Round())
	addr := first.Addr()
	require.NoError(t, first.Close())

	cfg.Addr, cfg.OnRound = addr, nil
	second := startServer(t, cfg)
	require.Equal(t, 2, second.Round())
	require.NoError(t, second.Run(testContext(t)))
	requireBitwise(t, want, second.Weights())
	h := second.History()
	require.Len(t, h, 2)
	assert.Equal(t, 3, h[0].Round)
	for name, err := range cs.wait() {
		assert.NoError(t, err, name)
	}

	// A finished run's checkpoint: a new server has nothing left to do.
	third := startServer(t, ServerConfig{Weights: exactWeights(d), Rounds: rounds, CheckpointPath: path})
	assert.Equal(t, rounds, third.Round())
	requireBitwise(t, want, third.Weights())

	// A checkpoint of another model is refused.
	_, err := NewServer(context.Background(), ServerConfig{Addr: "127.0.0.1:0", Token: testToken, Weights: exactWeights(d + 1), Rounds: rounds, CheckpointPath: path})
	require.ErrorContains(t, err, "model of 16 weights")
}

// TestRestartOverTLSAndQUIC: over TLS and QUIC too, a server restarted on
// its address (QUIC's UDP port is free once Close returns) with its
// certificate gets its clients back, and they accept it.
func TestRestartOverTLSAndQUIC(t *testing.T) {
	const d, rounds, n = 4, 2, 2
	fit := func(name string) FitFunc {
		i, _ := strconv.Atoi(name[1:])
		return exactFit(i, 1)
	}
	for _, tr := range []Transport{TLS, QUIC} {
		t.Run(string(tr), func(t *testing.T) {
			ctx, stop := context.WithCancel(testContext(t))
			cfg := ServerConfig{
				Transport:      tr,
				Certificate:    mustCert(t, tr),
				Weights:        exactWeights(d),
				Rounds:         rounds,
				Strategy:       &FedAvg{MinFitClients: n},
				CheckpointPath: filepath.Join(t.TempDir(), "server.ckpt"),
				OnRound: func(s RoundSummary) {
					if s.Round == 1 {
						stop()
					}
				},
			}
			first := startServer(t, cfg)
			cs := runClients(t, first, names(n), ClientConfig{}, fit)
			require.ErrorIs(t, first.Run(ctx), context.Canceled)
			require.NoError(t, first.Close())

			cfg.Addr, cfg.OnRound = first.Addr(), nil
			second := startServer(t, cfg)
			require.Equal(t, first.Fingerprint(), second.Fingerprint())
			require.NoError(t, second.Run(testContext(t)))
			assert.Equal(t, rounds, second.Round())
			require.Len(t, second.History(), 1)
			assert.Len(t, second.History()[0].Clients, n, "both clients came back")
			for name, err := range cs.wait() {
				assert.NoError(t, err, name)
			}
		})
	}
}

// TestStrangersRefused: a connection that does not speak the protocol, a
// client with the wrong token and one of another job are refused and
// never become clients; a client with the wrong token gives up with
// ErrAuth instead of retrying.
func TestStrangersRefused(t *testing.T) {
	var logs testlog.Buffer
	srv := startServer(t, ServerConfig{Weights: exactWeights(4), Rounds: 1, Logger: logs.Logger(slog.LevelDebug)})
	ctx := testContext(t)

	c, err := transport.DialTCP(ctx, srv.Addr())
	require.NoError(t, err)
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	buf := make([]byte, 1)
	_, err = c.Read(buf) // the server hangs up
	require.Error(t, err)
	_ = c.Close()

	for _, bad := range []ClientConfig{
		{Token: []byte("wrong token")},
		{Job: "another job"},
	} {
		bad.Addr, bad.Name = srv.Addr(), "intruder"
		if bad.Token == nil {
			bad.Token = testToken
		}
		if bad.Job == "" {
			bad.Job = testJob
		}
		bad.Fit = exactFit(0, 1)
		bad.Logger = discardLogger()
		client, err := NewClient(bad)
		require.NoError(t, err)
		err = client.Run(ctx)
		require.Error(t, err)
		if bad.Job == testJob {
			require.ErrorIs(t, err, transport.ErrAuth)
		} else {
			require.ErrorIs(t, err, transport.ErrProtocol)
		}
	}
	srv.liveMu.Lock()
	assert.Empty(t, srv.live)
	srv.liveMu.Unlock()
	// A refused client may give up before the server has finished its side
	// of the handshake (a wrong token is seen by both): the server's note
	// comes when it does.
	for _, reason := range []string{"not a ringo handshake", "did not prove it holds the job token", "different job id"} {
		require.Eventually(t, func() bool { return strings.Contains(logs.String(), reason) },
			testTimeout, 5*time.Millisecond, "the server should log %q", reason)
	}
}

// TestWrongServerCertificate: over TLS and QUIC, a client that expects
// another server's certificate refuses this one, and gives up.
func TestWrongServerCertificate(t *testing.T) {
	other, err := transport.NewCertificate()
	require.NoError(t, err)
	for _, tr := range []Transport{TLS, QUIC} {
		t.Run(string(tr), func(t *testing.T) {
			srv := startServer(t, ServerConfig{Transport: tr, Weights: exactWeights(4), Rounds: 1})
			client, err := NewClient(ClientConfig{
				Addr: srv.Addr(), Transport: tr, ServerFingerprint: other.Fingerprint(),
				Token: testToken, Job: testJob, Name: "c", Fit: exactFit(0, 1), Logger: discardLogger(),
			})
			require.NoError(t, err)
			require.ErrorIs(t, client.Run(testContext(t)), transport.ErrAuth)
		})
	}
}

// TestBadUpdatesDropped: clients that send a wrong-length update, NaN or
// infinite weights, a zero sample count, bytes that do not decode, or a
// frame of another protocol are dropped from the round with the reason
// logged; the round completes with the honest clients and its aggregate
// is exactly theirs.
func TestBadUpdatesDropped(t *testing.T) {
	const d = 9
	var logs testlog.Buffer
	honest := []int{0, 1}
	examples := []int{4, 4}
	const bad = 7
	srv := startServer(t, ServerConfig{
		Weights:  exactWeights(d),
		Rounds:   1,
		Strategy: &FedAvg{MinFitClients: 2, MinAvailableClients: 2 + bad},
		Logger:   logs.Logger(slog.LevelDebug),
	})
	runClients(t, srv, []string{"c00", "c01"}, ClientConfig{}, func(name string) FitFunc {
		i, _ := strconv.Atoi(name[1:])
		return exactFit(i, examples[i])
	})
	nan := make([]float32, d)
	nan[3] = float32(math.NaN())
	inf := make([]float32, d)
	inf[8] = float32(math.Inf(-1))
	cases := []struct {
		name   string
		answer func(f *fakeClient, task uint64)
		reason string
	}{
		{"short", func(f *fakeClient, task uint64) {
			f.send(&updateMsg{Task: task, Examples: 1, Weights: make([]float32, d-1)})
		}, "sent 8 weights, the model has 9"},
		{"nan", func(f *fakeClient, task uint64) {
			f.send(&updateMsg{Task: task, Examples: 1, Weights: nan})
		}, "sent weight 3 = NaN"},
		{"inf", func(f *fakeClient, task uint64) {
			f.send(&updateMsg{Task: task, Examples: 1, Weights: inf})
		}, "sent weight 8 = -Inf"},
		{"zero", func(f *fakeClient, task uint64) {
			f.send(&updateMsg{Task: task, Examples: 0, Weights: make([]float32, d)})
		}, "sent a sample count of 0"},
		{"garbage", func(f *fakeClient, task uint64) {
			f.sendRaw(kindUpdate, []byte("\x01\x02 this is not an update"))
		}, "sent garbage"},
		{"oversized", func(f *fakeClient, task uint64) {
			// The server hangs up once it has read the header, so the
			// write of the payload may fail with a reset.
			_ = f.w.sendPayload(kindUpdate, 0, make([]byte, f.limit+1), testTimeout)
		}, "update message of 1051709 bytes (at most 1051708 expected)"},
		{"alien", func(f *fakeClient, task uint64) {
			_, err := f.w.s.Write([]byte("SSH-2.0-OpenSSH_9.6\r\n................................................"))
			require.NoError(t, err)
		}, "not a frame of the federated protocol"},
	}
	require.Len(t, cases, bad)
	var wg sync.WaitGroup
	for _, b := range cases {
		f := dialFake(t, srv, "bad-"+b.name)
		f.limit = srv.limit(kindUpdate)
		wg.Add(1)
		go func() {
			defer wg.Done()
			fit := f.recvFit()
			b.answer(f, fit.Task)
		}()
	}
	require.NoError(t, srv.Run(testContext(t)))
	wg.Wait()
	want, exact := exactMean(exactWeights(d), honest, examples, 1)
	require.True(t, exact)
	requireBitwise(t, want, srv.Weights())
	h := srv.History()[0]
	assert.Len(t, h.Clients, 2)
	require.Len(t, h.Failures, bad)
	log := logs.String()
	for _, b := range cases {
		assert.Contains(t, log, b.reason, b.name)
	}
}

// TestLateResultRefused: a client that answers round 1 only after the
// round completed without it has its answer refused (and logged); round
// 2's aggregate holds its round-2 answer, not the stale one.
func TestLateResultRefused(t *testing.T) {
	const d = 8
	var logs testlog.Buffer
	examples := []int{2, 2, 4}
	srv := startServer(t, ServerConfig{
		Weights:      exactWeights(d),
		Rounds:       2,
		Strategy:     &FedAvg{MinFitClients: 2, MinAvailableClients: 3},
		RoundTimeout: testTimeout,
		Logger:       logs.Logger(slog.LevelDebug),
	})
	runClients(t, srv, []string{"c00", "c01"}, ClientConfig{}, func(name string) FitFunc {
		i, _ := strconv.Atoi(name[1:])
		return exactFit(i, examples[i])
	})
	late := dialFake(t, srv, "c02")
	done := make(chan struct{})
	go func() {
		defer close(done)
		first := late.recvFit()
		// Leave round 1 by failing it; answer it anyway in round 2.
		late.send(&failedMsg{Task: first.Task, Reason: "busy"})
		second := late.recvFit()
		stale := make([]float32, d)
		for j := range stale {
			stale[j] = 1000
		}
		late.send(&updateMsg{Task: first.Task, Examples: 100, Weights: stale})
		w := second.Weights
		for j := range w {
			w[j] += exactDelta(2, j, 2)
		}
		late.send(&updateMsg{Task: second.Task, Examples: 4, Weights: w})
	}()
	require.NoError(t, srv.Run(testContext(t)))
	<-done
	want, _ := exactMean(exactWeights(d), []int{0, 1}, examples[:2], 1)
	want, exact := exactMean(want, []int{0, 1, 2}, examples, 2)
	require.True(t, exact)
	requireBitwise(t, want, srv.Weights())
	assert.Contains(t, logs.String(), "refused a late message")
	assert.Contains(t, logs.String(), "of_round=1")
}

// TestRetryWithTooFewResults: when fewer than MinFitClients answer, the
// round is tried again, and completes when enough do. Under secure
// aggregation the failing client has sent its key before its training
// fails: the server takes its report in a later phase and goes on without
// waiting for the round's timeout.
func TestRetryWithTooFewResults(t *testing.T) {
	const d = 5
	for _, secure := range []bool{false, true} {
		t.Run("secure="+strconv.FormatBool(secure), func(t *testing.T) {
			var failed atomic.Bool
			cfg := ServerConfig{Weights: exactWeights(d), Rounds: 1, Strategy: &FedAvg{MinFitClients: 3}}
			if secure {
				cfg.Secure = &SecureAggregation{}
			}
			srv := startServer(t, cfg)
			runClients(t, srv, names(3), ClientConfig{}, func(name string) FitFunc {
				i, _ := strconv.Atoi(name[1:])
				fit := exactFit(i, []int{2, 2, 4}[i])
				return func(ctx context.Context, ins *FitIns) (FitRes, error) {
					if i == 1 && failed.CompareAndSwap(false, true) {
						return FitRes{}, errors.New("out of memory")
					}
					return fit(ctx, ins)
				}
			})
			start := time.Now()
			require.NoError(t, srv.Run(testContext(t)))
			assert.Less(t, time.Since(start), testTimeout/2, "the failure was taken at once, not at the round's timeout")
			h := srv.History()[0]
			assert.Equal(t, 2, h.Attempts)
			want, exact := exactMean(exactWeights(d), []int{0, 1, 2}, []int{2, 2, 4}, 1)
			require.True(t, exact)
			requireBitwise(t, want, srv.Weights())
		})
	}
}

// TestRoundFailsAfterMaxAttempts: with MinFitClients unreachable, Run
// gives up with ErrRoundFailed.
func TestRoundFailsAfterMaxAttempts(t *testing.T) {
	srv := startServer(t, ServerConfig{Weights: exactWeights(3), Rounds: 1, MaxAttempts: 2, Strategy: &FedAvg{MinFitClients: 2}})
	runClients(t, srv, names(2), ClientConfig{}, func(name string) FitFunc {
		return func(context.Context, *FitIns) (FitRes, error) {
			if name == "c01" {
				return FitRes{}, errors.New("no data")
			}
			return FitRes{Weights: make([]float32, 3), Examples: 1}, nil
		}
	})
	err := srv.Run(testContext(t))
	require.ErrorIs(t, err, ErrRoundFailed)
	require.ErrorContains(t, err, "no data")
}

// TestJoinAfterTrainingEnds: a client that connects after Run finished is
// told that training is over, and its Run returns nil.
func TestJoinAfterTrainingEnds(t *testing.T) {
	srv := startServer(t, ServerConfig{Weights: exactWeights(3), Rounds: 1})
	runClients(t, srv, names(2), ClientConfig{}, func(string) FitFunc { return exactFit(0, 1) })
	require.NoError(t, srv.Run(testContext(t)))
	late := runClients(t, srv, []string{"late"}, ClientConfig{}, func(string) FitFunc { return exactFit(0, 1) })
	require.NoError(t, late.wait()["late"])
}

// TestClientBacksOff: a client whose connections keep failing retries,
// waiting at least half of a delay that doubles from MinBackoff up to
// MaxBackoff between attempts (the lower bounds hold however loaded the
// machine is).
func TestClientBacksOff(t *testing.T) {
	ln, err := transport.ListenTCP(testContext(t), "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	const attempts = 7
	accepted := make(chan time.Time, attempts)
	go func() {
		for range attempts {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- time.Now()
			_ = c.Close() // the handshake fails: not a permanent error
		}
	}()
	client, err := NewClient(ClientConfig{Addr: ln.Addr().String(), Token: testToken, Name: "c", Fit: exactFit(0, 1),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond, Logger: discardLogger()})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(testContext(t))
	done := make(chan error, 1)
	go func() { done <- client.Run(ctx) }()
	var times []time.Time
	for range attempts {
		times = append(times, <-accepted)
	}
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	delay := 10 * time.Millisecond
	for i := 1; i < attempts; i++ {
		assert.GreaterOrEqual(t, times[i].Sub(times[i-1]), delay/2, "attempt %d", i)
		delay = min(2*delay, 40*time.Millisecond)
	}
}
