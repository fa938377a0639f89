package fed

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// BenchmarkRound measures whole rounds, server and n clients in this
// process over TCP loopback, with a model of 1000 weights and a Fit that
// only adds a constant: the cost of the protocol, not of training. Every
// sampled client must answer (MinFitClients = n).
//
//	go test -run='^$' -bench=BenchmarkRound -benchtime=10x ./parallel/fed/
func BenchmarkRound(b *testing.B) {
	const d = 1000
	for _, n := range []int{10, 100, 1000} {
		for _, secure := range []bool{false, true} {
			b.Run(fmt.Sprintf("clients=%d/secure=%v", n, secure), func(b *testing.B) {
				benchRounds(b, n, d, secure)
			})
		}
	}
}

func benchRounds(b *testing.B, n, d int, secure bool) {
	cfg := ServerConfig{
		Weights:      make([]float32, d),
		Rounds:       b.N + 1, // round 1 waits for the clients to connect: not timed
		Strategy:     &FedAvg{MinFitClients: n},
		RoundTimeout: 30 * time.Minute,
		OnRound: func(s RoundSummary) {
			if s.Round == 1 {
				b.ResetTimer()
			}
		},
	}
	if secure {
		cfg.Secure = &SecureAggregation{KeyTimeout: 30 * time.Minute, UnmaskTimeout: 30 * time.Minute}
	}
	srv := startServer(b, cfg)
	runClients(b, srv, names(n), ClientConfig{MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second}, func(string) FitFunc {
		return func(_ context.Context, ins *FitIns) (FitRes, error) {
			for j := range ins.Weights {
				ins.Weights[j] += 1.0 / 1024
			}
			return FitRes{Weights: ins.Weights, Examples: 10}, nil
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	require.NoError(b, srv.Run(ctx))
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rounds/s")
}

// BenchmarkKeyAgreement is one client's cost per peer in a secure round:
// one X25519 agreement and the seed's hash.
func BenchmarkKeyAgreement(b *testing.B) {
	a, err := newKey()
	require.NoError(b, err)
	c, err := newKey()
	require.NoError(b, err)
	pub := publicBytes(c)
	for b.Loop() {
		if _, err := agree(1, 1, 2, a, pub); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMask is the cost of expanding one seed into a mask over a
// model of d weights and adding it: paid by each client once per peer,
// and by the server once per survivor and per (survivor, dropped) pair.
func BenchmarkMask(b *testing.B) {
	for _, d := range []int{1000, 100000} {
		b.Run(fmt.Sprintf("d=%d", d), func(b *testing.B) {
			v := make([]uint64, d+1)
			var m masker
			var key [32]byte
			b.SetBytes(int64(8 * len(v)))
			for b.Loop() {
				m.apply(v, key, false)
			}
		})
	}
}

// BenchmarkClientMasking is one client's secure-aggregation work in a
// round of n clients, apart from training: n−1 key agreements and the
// masking of its encoded update with its self mask and n−1 pair masks.
// In a real federation each client pays it on its own CPU.
func BenchmarkClientMasking(b *testing.B) {
	for _, d := range []int{1000, 100000} {
		for _, n := range []int{10, 100, 1000} {
			b.Run(fmt.Sprintf("d=%d/clients=%d", d, n), func(b *testing.B) {
				const task, self = 7, 1
				priv, err := newKey()
				require.NoError(b, err)
				km := &keysMsg{Task: task, Peers: []peerKey{{ID: self, Key: publicBytes(priv)}}}
				for i := 2; i <= n; i++ {
					k, err := newKey()
					require.NoError(b, err)
					km.Peers = append(km.Peers, peerKey{ID: uint64(i), Key: publicBytes(k)})
				}
				p := defaultParams()
				global, w := make([]float32, d), make([]float32, d)
				vec := make([]uint64, d+1)
				var c Client
				var m masker
				for b.Loop() {
					seeds, err := c.agreeAll(task, self, publicBytes(priv), priv, km, p)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := p.encodeUpdate(vec, w, global, 10); err != nil {
						b.Fatal(err)
					}
					m.apply(vec, [32]byte{}, false)
					for _, pk := range km.Peers[1:] {
						m.apply(vec, seeds[pk.ID], !pairAdds(self, pk.ID))
					}
				}
			})
		}
	}
}

// BenchmarkServerUnmasking is the server's mask removal in a secure round
// of n clients of which 30% dropped after the keys were agreed: one self
// mask per survivor and one pair mask per (survivor, dropped) pair, spread
// over the CPUs.
func BenchmarkServerUnmasking(b *testing.B) {
	const d = 1000
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("d=%d/clients=%d", d, n), func(b *testing.B) {
			dropped := int(0.3 * float64(n))
			survivors := n - dropped
			removals := make([]maskRemoval, 0, survivors*(1+dropped))
			for u := range survivors {
				removals = append(removals, maskRemoval{key: [32]byte{byte(u)}, subtract: true})
				for v := range dropped {
					removals = append(removals, maskRemoval{key: [32]byte{byte(u), byte(v)}, subtract: u < v})
				}
			}
			sum := make([]uint64, d+1)
			b.ReportMetric(float64(len(removals)), "masks")
			for b.Loop() {
				removeMasks(sum, removals)
			}
		})
	}
}
