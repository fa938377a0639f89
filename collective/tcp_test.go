package collective_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
)

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t testing.TB) string { return testjob.FreeAddr(t) }

// formTCP forms an n-rank communicator over loopback TCP, each rank in its own
// goroutine; rank 0, which serves the rendezvous, is started last.
func formTCP(t testing.TB, n int, cfg collective.Config) []*collective.Comm {
	t.Helper()
	cfg.Addr = freeAddr(t)
	return formTCPAt(t, n, cfg)
}

// formTCPAt is formTCP with the rendezvous address in cfg.Addr. The
// transport is TCP unless cfg names another (New's default would connect
// these ranks, all of one host, through shared memory).
func formTCPAt(t testing.TB, n int, cfg collective.Config) []*collective.Comm {
	t.Helper()
	if cfg.Transport == "" {
		cfg.Transport = "tcp"
	}
	return formAt(t, n, cfg, nil)
}

// formAt forms n ranks with New, each in its own goroutine (rank 0, which
// serves the rendezvous, last), with cfg and then, for each rank, what
// each (if not nil) changes.
func formAt(t testing.TB, n int, cfg collective.Config, each func(r int, c *collective.Config)) []*collective.Comm {
	t.Helper()
	cfg.Size = n
	if cfg.Timeout == 0 {
		cfg.Timeout = testTimeout
	}
	comms := make([]*collective.Comm, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := n - 1; r >= 0; r-- {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cfg
			c.Rank = r
			if each != nil {
				each(r, &c)
			}
			comms[r], errs[r] = collective.New(ctx, c)
		}()
	}
	wg.Wait()
	t.Cleanup(func() { closeAll(comms) })
	requireAllOK(t, errs)
	return comms
}

func TestTCPAllReduceReduceScatterAllGather(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4} {
		checkEveryCollective(t, formTCP(t, n, collective.Config{Token: "s3cret", JobID: "test"}))
	}
}

// checkEveryCollective runs each kind of collective on comms (every rank at
// once) and checks the results exactly.
func checkEveryCollective(t *testing.T, comms []*collective.Comm) {
	t.Helper()
	n := len(comms)
	for _, count := range []int{0, 1, n + 1, 1009, 300_007} {
		results := make([][]float32, n)
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			results[r] = inputs[float32](r, count, collective.Sum)
			return collective.AllReduce(ctx, c, results[r], collective.Sum)
		}))
		for i := range count {
			require.Equal(t, reference[float32](n, i, collective.Sum), results[0][i], "n=%d count=%d i=%d", n, count, i)
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
		if r == n-1 {
			for i := range buf {
				buf[i] = uint8(i)
			}
		}
		if err := collective.Broadcast(ctx, c, buf, n-1); err != nil {
			return err
		}
		for i := range buf {
			if buf[i] != uint8(i) {
				return fmt.Errorf("rank %d: broadcast element %d = %d", r, i, buf[i])
			}
		}
		return collective.Barrier(ctx, c)
	}))
}

func TestTCPWrongTokenIsRefusedAtTheHandshake(t *testing.T) {
	addr := freeAddr(t)
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var err0, err1 error
	wg.Add(2)
	go func() {
		defer wg.Done()
		c, err := collective.New(cctx, collective.Config{Rank: 0, Size: 2, Addr: addr, Token: "right"})
		if c != nil {
			c.Close()
		}
		err0 = err
	}()
	go func() {
		defer wg.Done()
		c, err := collective.New(cctx, collective.Config{Rank: 1, Size: 2, Addr: addr, Token: "wrong"})
		if c != nil {
			c.Close()
		}
		err1 = err
	}()
	wg.Wait()
	require.Error(t, err1)
	assert.ErrorIs(t, err1, collective.ErrAuth)
	assert.Contains(t, err1.Error(), "token")
	// Rank 0 never hears from a rank 1 that holds the token.
	require.Error(t, err0)
	assert.ErrorIs(t, err0, context.DeadlineExceeded)
}

func TestTCPStrangerOnTheRendezvousPortIsIgnored(t *testing.T) {
	addr := freeAddr(t)
	var wg sync.WaitGroup
	comms := make([]*collective.Comm, 2)
	errs := make([]error, 2)
	wg.Add(1)
	go func() {
		defer wg.Done()
		comms[0], errs[0] = collective.New(ctx, collective.Config{Rank: 0, Size: 2, Addr: addr, Token: "t", Timeout: testTimeout})
	}()
	// A stranger connects first and speaks HTTP; rank 1 joins after it.
	var conn net.Conn
	require.Eventually(t, func() bool {
		var err error
		conn, err = net.Dial("tcp", addr)
		return err == nil
	}, 10*time.Second, 5*time.Millisecond)
	_, _ = conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	comms[1], errs[1] = collective.New(ctx, collective.Config{Rank: 1, Size: 2, Addr: addr, Token: "t", Timeout: testTimeout})
	wg.Wait()
	_ = conn.Close()
	t.Cleanup(func() { closeAll(comms) })
	requireAllOK(t, errs)
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error { return collective.Barrier(ctx, c) }))
}

// TestProcessesFormAJobFromTheEnvironment runs every rank as its own OS
// process (this test binary, re-executed) configured only by environment
// variables, as a launcher would start them.
func TestProcessesFormAJobFromTheEnvironment(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 4 processes")
	}
	const n = 4
	addr := freeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	job := testjob.Start(t, testjob.Config{Ranks: n, Role: "allreduce", Addr: addr, Env: func(r int) []string {
		if r%2 == 0 { // half the ranks speak ringo's variables, half torchrun's
			return nil
		}
		return []string{"RINGO_RANK=", "RINGO_WORLD_SIZE=", "RINGO_ADDR=",
			"RANK=" + strconv.Itoa(r), "WORLD_SIZE=" + strconv.Itoa(n), "MASTER_ADDR=" + host, "MASTER_PORT=" + port}
	}})
	deadline := time.Now().Add(90 * time.Second)
	for r := range n {
		_, err := job.Rank(r).Exit(t, time.Until(deadline))
		require.NoError(t, err, "rank %d:\n%s", r, job.Rank(r).Output())
		assert.Contains(t, job.Rank(r).Output(), fmt.Sprintf("rank %d of %d ok", r, n))
	}
}

// childRoles are what this test binary does when a test starts it again as
// a rank (testjob.Start).
var childRoles = map[string]func() int{"allreduce": childAllReduce, "loop": childLoop}

// childAllReduce is a rank that checks AllReduce results and says ok.
func childAllReduce() int {
	if err := childMain(); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

func childMain() error {
	c, err := collective.Init(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	n, r := c.Size(), c.Rank()
	for _, count := range []int{0, 1, 3, 1031, 262_147} {
		buf := inputs[float32](r, count, collective.Sum)
		if err := collective.AllReduce(ctx, c, buf, collective.Sum); err != nil {
			return err
		}
		for i := range buf {
			if want := reference[float32](n, i, collective.Sum); buf[i] != want {
				return fmt.Errorf("count %d: element %d = %v, want %v", count, i, buf[i], want)
			}
		}
	}
	if err := collective.Barrier(ctx, c); err != nil {
		return err
	}
	fmt.Printf("rank %d of %d ok\n", r, n)
	return nil
}

// TestTCPStrangerMidJobLeavesTheJobAlone: once formed, a communicator listens
// for nobody: a stranger dialing the rendezvous port mid-job is refused (or,
// if something else took the port, never reaches a rank), and collectives go
// on with correct results.
func TestTCPStrangerMidJobLeavesTheJobAlone(t *testing.T) {
	cfg := collective.Config{Token: "mid-job"}
	cfg.Addr = freeAddr(t)
	comms := formTCPAt(t, 3, cfg)
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error { return collective.Barrier(ctx, c) }))
	if conn, err := net.DialTimeout("tcp", cfg.Addr, time.Second); err == nil {
		_, _ = conn.Write([]byte("RINGOHS\x00 garbage after a valid magic"))
		_ = conn.Close()
	}
	for range 3 {
		results := make([][]int64, 3)
		requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
			results[r] = inputs[int64](r, 1000, collective.Sum)
			return collective.AllReduce(ctx, c, results[r], collective.Sum)
		}))
		for i := range 1000 {
			require.Equal(t, reference[int64](3, i, collective.Sum), results[1][i])
		}
	}
	for _, c := range comms {
		require.NoError(t, c.Err())
	}
}

func TestLocalNetwork(t *testing.T) {
	_, err := collective.LocalNetwork(ctx, 0, collective.Config{})
	require.ErrorIs(t, err, collective.ErrInvalid)
	comms, err := collective.LocalNetwork(ctx, 3, collective.Config{Token: "t", Timeout: testTimeout})
	require.NoError(t, err)
	t.Cleanup(func() { closeAll(comms) })
	results := make([][]float64, 3)
	requireAllOK(t, each(comms, func(r int, c *collective.Comm) error {
		require.Equal(t, r, c.Rank())
		results[r] = inputs[float64](r, 5000, collective.Sum)
		return collective.AllReduce(ctx, c, results[r], collective.Sum)
	}))
	for i := range 5000 {
		require.Equal(t, reference[float64](3, i, collective.Sum), results[0][i])
	}
}
