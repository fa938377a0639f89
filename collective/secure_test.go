package collective_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
)

// secureConfigs are the transports with TLS: QUIC, and TCP with TLS.
var secureConfigs = []struct {
	name string
	cfg  collective.Config
}{
	{"quic", collective.Config{Transport: "quic"}},
	{"tcp+tls", collective.Config{TLS: true}},
}

// TestSecureTransportsRunTheCollectives forms a 3-rank communicator over each
// TLS transport and checks the results of every kind of collective.
func TestSecureTransportsRunTheCollectives(t *testing.T) {
	const n = 3
	for _, sc := range secureConfigs {
		t.Run(sc.name, func(t *testing.T) {
			cfg := sc.cfg
			cfg.Token, cfg.JobID = "s3cret", "secure"
			comms := formTCP(t, n, cfg)
			for _, count := range []int{0, 1, 1009, 300_007} {
				results := make([][]float32, n)
				requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
					results[r] = inputs[float32](r, count, collective.Sum)
					return collective.AllReduce(ctx, c, results[r], collective.Sum)
				}))
				for i := range count {
					require.Equal(t, reference[float32](n, i, collective.Sum), results[0][i], "count=%d i=%d", count, i)
				}
				requireIdentical(t, results)
			}
			const m = 4099
			requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
				send := inputs[int64](r, n*m, collective.Max)
				recv := make([]int64, m)
				if err := collective.ReduceScatter(ctx, c, send, recv, collective.Max); err != nil {
					return err
				}
				for j := range m {
					if want := reference[int64](n, r*m+j, collective.Max); recv[j] != want {
						return fmt.Errorf("rank %d: reduce-scatter element %d = %d, want %d", r, j, recv[j], want)
					}
				}
				all := make([]int64, n*m)
				if err := collective.AllGather(ctx, c, recv, all); err != nil {
					return err
				}
				for i := range all {
					if want := reference[int64](n, i, collective.Max); all[i] != want {
						return fmt.Errorf("rank %d: allgather element %d = %d, want %d", r, i, all[i], want)
					}
				}
				buf := make([]uint8, 77)
				if r == 1 {
					for i := range buf {
						buf[i] = uint8(i)
					}
				}
				if err := collective.Broadcast(ctx, c, buf, 1); err != nil {
					return err
				}
				for i := range buf {
					if buf[i] != uint8(i) {
						return fmt.Errorf("rank %d: broadcast element %d = %d", r, i, buf[i])
					}
				}
				return collective.Barrier(ctx, c)
			}))
		})
	}
}

// A rank with the wrong token is refused over QUIC as over TCP.
func TestQUICWrongTokenIsRefused(t *testing.T) {
	addr := freeAddr(t)
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for r, token := range []string{"right", "wrong"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := collective.New(cctx, collective.Config{Rank: r, Size: 2, Addr: addr, Token: token, Transport: "quic"})
			if c != nil {
				c.Close()
			}
			errs[r] = err
		}()
	}
	wg.Wait()
	require.Error(t, errs[1])
	assert.ErrorIs(t, errs[1], collective.ErrAuth)
	require.Error(t, errs[0])
	assert.ErrorIs(t, errs[0], context.DeadlineExceeded)
}

// Ranks that disagree on TLS cannot form a communicator, and say why.
func TestMixedTLSSettingsAreRefused(t *testing.T) {
	addr := freeAddr(t)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for r, tls := range []bool{true, false} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := collective.New(cctx, collective.Config{Rank: r, Size: 2, Addr: addr, Token: "t", TLS: tls})
			if c != nil {
				c.Close()
			}
			errs[r] = err
		}()
	}
	wg.Wait()
	require.Error(t, errs[0])
	assert.Contains(t, errs[0].Error(), "rank 1 registered no certificate fingerprint")
	require.Error(t, errs[1])
}
