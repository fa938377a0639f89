// Package testjob runs the ranks of a job for tests: as goroutines of the
// test (Each, Driver), or as processes, the test binary started again once
// per rank (Start, RunRank), whose output the test reads line by line and
// which it can kill to see how the others fail. It imports nothing of
// ringo, so that the tests of every package, inside or outside it, can use
// it; only tests do (internal/archtest keeps it so).
package testjob

import (
	"io"
	"net"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// Each runs fn for every rank 0..n-1 on a goroutine of its own and returns
// each rank's error.
func Each(n int, fn func(rank int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() { errs[r] = fn(r) })
	}
	wg.Wait()
	return errs
}

// RequireAllOK fails the test with the first rank's error, if any.
func RequireAllOK(t testing.TB, errs []error) {
	t.Helper()
	for r, err := range errs {
		require.NoError(t, err, "rank %d", r)
	}
}

// CloseAll closes every rank's c at once: a rank's Close may wait for its
// peers'.
func CloseAll[C io.Closer](cs []C) {
	Each(len(cs), func(r int) error { return cs[r].Close() })
}

// FreeAddr returns a loopback address with a port nobody listens on.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}
