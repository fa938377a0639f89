package collective_test

import (
	"context"
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
			checkEveryCollective(t, formTCP(t, n, cfg))
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
			c, err := collective.New(cctx, collective.Config{Rank: r, Size: 2, Addr: addr, Token: "t", TLS: tls, Transport: "tcp"})
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
