package collective

import (
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestListenAddressIsTheOneGiven(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:29504":   "127.0.0.1:29504",
		"[::1]:29504":       "[::1]:29504",
		"localhost:29504":   "localhost:29504",
		"10.0.0.1:29504":    "10.0.0.1:29504",
		":29504":            ":29504",
		"node1.local:29504": ":29504", // a host name may resolve to loopback here
	} {
		got, err := listenAddress(Config{Addr: addr})
		require.NoError(t, err, addr)
		assert.Equal(t, want, got, addr)
	}
	_, err := listenAddress(Config{Addr: "no port"})
	require.ErrorIs(t, err, ErrInvalid)
}

func TestExposedHost(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:1":   "",
		"127.0.1.1:1":   "",
		"[::1]:1":       "",
		"localhost:1":   "",
		"10.0.0.1:1":    "10.0.0.1",
		":1":            "every interface",
		"node1.local:1": "node1.local",
	} {
		got, err := exposedHost(Config{Addr: addr})
		require.NoError(t, err, addr)
		assert.Equal(t, want, got, addr)
	}
	got, err := exposedHost(Config{Addr: "127.0.0.1:1", Iface: "lo"})
	require.NoError(t, err)
	assert.Empty(t, got, "the loopback interface is loopback")
	_, err = exposedHost(Config{Addr: "127.0.0.1:1", Iface: "no-such-interface0"})
	require.Error(t, err)
}

func TestSecuredDerivesTheTokenFromTheJobID(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	a, err := secured(Config{Addr: "127.0.0.1:1", JobID: "slurm-1.0"}, quiet)
	require.NoError(t, err)
	b, err := secured(Config{Addr: "127.0.0.1:1", Rank: 3, JobID: "slurm-1.0"}, quiet)
	require.NoError(t, err)
	c, err := secured(Config{Addr: "127.0.0.1:1", JobID: "slurm-1.1"}, quiet)
	require.NoError(t, err)
	assert.NotEmpty(t, a.Token)
	assert.Equal(t, a.Token, b.Token, "every rank of a job derives the same token")
	assert.NotEqual(t, a.Token, c.Token, "another job, another token")
	own, err := secured(Config{Addr: "10.0.0.1:1", JobID: "slurm-1.0", Token: "mine"}, quiet)
	require.NoError(t, err)
	assert.Equal(t, "mine", own.Token, "a token given is kept")
	none, err := secured(Config{Addr: "127.0.0.1:1"}, quiet)
	require.NoError(t, err, "loopback needs no token")
	assert.Empty(t, none.Token)
}

func TestProgressEvery(t *testing.T) {
	assert.Equal(t, 5*time.Second, progressEvery(Config{}), "the default timeout (5 min): every 5 s")
	assert.Equal(t, 5*time.Second, progressEvery(Config{Timeout: -1}))
	assert.Equal(t, 750*time.Millisecond, progressEvery(Config{Timeout: 3 * time.Second}))
	assert.Equal(t, 50*time.Millisecond, progressEvery(Config{Timeout: time.Millisecond}))
}
