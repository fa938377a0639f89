package collective_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testlog"
)

type formed struct {
	comm *collective.Comm
	err  error
}

// startRank runs New for one rank in the background.
func startRank(cfg collective.Config, rank int) <-chan formed {
	cfg.Rank = rank
	ch := make(chan formed, 1)
	go func() {
		c, err := collective.New(ctx, cfg)
		ch <- formed{c, err}
	}()
	return ch
}

func await(t *testing.T, ch <-chan formed) formed {
	t.Helper()
	select {
	case f := <-ch:
		if f.comm != nil {
			t.Cleanup(func() { _ = f.comm.Close() })
		}
		return f
	case <-time.After(2 * testTimeout):
		require.FailNow(t, "New did not return")
		return formed{}
	}
}

// Two jobs given the same rendezvous address (two mpirun jobs with one
// RINGO_ADDR) never join each other: the ranks of the second are refused by
// the first's rendezvous, which says so, and the second's rank 0 waits for
// the port; once the first job has formed, the second forms.
func TestTwoJobsGivenOneAddressFormOneAfterTheOther(t *testing.T) {
	const n = 3
	addr := freeAddr(t)
	logA, logB := new(testlog.Buffer), new(testlog.Buffer)
	// No token: each job's is derived from its id, as under mpirun.
	cfgA := collective.Config{Size: n, Addr: addr, JobID: "job-A", Timeout: testTimeout, Logger: logA.Lines()}
	cfgB := collective.Config{Size: n, Addr: addr, JobID: "job-B", Timeout: testTimeout, Logger: logB.Lines()}

	jobA := []<-chan formed{startRank(cfgA, 0), startRank(cfgA, 1)}
	logA.WaitFor(t, "ringo rendezvous: rank registered", testTimeout) // A's rank 0 holds the port
	jobB := []<-chan formed{startRank(cfgB, 0), startRank(cfgB, 1), startRank(cfgB, 2)}
	logB.WaitFor(t, "WARN ringo: the rendezvous port of "+addr+" is in use (by another job?): waiting for it rank=0", testTimeout)
	logA.WaitFor(t, `tried to join job "job-A"; is another job using this port?`, testTimeout)
	assert.Contains(t, logA.String(), "WARN ringo rendezvous: a rank of another job (rank ")

	jobA = append(jobA, startRank(cfgA, 2))
	comms := map[string][]*collective.Comm{}
	for job, chans := range map[string][]<-chan formed{"A": jobA, "B": jobB} {
		for r, ch := range chans {
			f := await(t, ch)
			require.NoError(t, f.err, "job %s rank %d", job, r)
			comms[job] = append(comms[job], f.comm)
		}
	}

	// Each job sums its own ranks only.
	for job, base := range map[string]int32{"A": 100, "B": 200} {
		bufs := make([][]int32, n)
		errs := each(comms[job], func(r int, c *collective.Comm) error {
			require.Equal(t, n, c.Size())
			bufs[r] = []int32{base + int32(r), 1}
			return collective.AllReduce(ctx, c, bufs[r], collective.Sum)
		})
		requireAllOK(t, errs)
		for r := range n {
			assert.Equal(t, []int32{3*base + 0 + 1 + 2, n}, bufs[r], "job %s rank %d", job, r)
		}
	}
}

// Without a token or a job id, a job refuses to listen beyond loopback,
// and says how to give it a token; with a job id it forms with a token
// derived from it, and rank 0 warns that it is no secret; Insecure lets it
// through as it is.
func TestNoTokenBeyondLoopback(t *testing.T) {
	for _, addr := range []string{"203.0.113.9:29504", ":29504", "node1.example:29504"} {
		for _, rank := range []int{0, 1} {
			_, err := collective.New(ctx, collective.Config{Rank: rank, Size: 2, Addr: addr})
			require.ErrorIs(t, err, collective.ErrInvalid, "%s rank %d", addr, rank)
			for _, want := range []string{"without a job token", "RINGO_TOKEN", "RINGO_JOB_ID", "RINGO_INSECURE=1"} {
				assert.Contains(t, err.Error(), want)
			}
		}
	}

	// 203.0.113.9 is no address of this machine: rank 0 gets that far and
	// no further.
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	log := new(testlog.Buffer)
	_, err := collective.New(short, collective.Config{Rank: 0, Size: 2, Addr: "203.0.113.9:29504", JobID: "slurm-4711.0", Logger: log.Lines()})
	require.Error(t, err)
	assert.NotErrorIs(t, err, collective.ErrInvalid)
	assert.Contains(t, err.Error(), "cannot serve the rendezvous at 203.0.113.9:29504")
	assert.Contains(t, log.String(), `WARN ringo: no RINGO_TOKEN: the job token is derived from the job id "slurm-4711.0", which is no secret`)

	_, err = collective.New(short, collective.Config{Rank: 0, Size: 2, Addr: "203.0.113.9:29504", Insecure: true})
	require.Error(t, err)
	assert.NotErrorIs(t, err, collective.ErrInvalid)
	assert.Contains(t, err.Error(), "cannot serve the rendezvous at 203.0.113.9:29504")
}

// RINGO_ADDR=127.0.0.1:port means loopback only: the rendezvous cannot be
// reached on this machine's other addresses.
func TestRendezvousListensOnTheAddressGiven(t *testing.T) {
	var other string
	addrs, err := net.InterfaceAddrs()
	require.NoError(t, err)
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
			other = ipn.IP.String()
			break
		}
	}
	if other == "" {
		t.Skip("this machine has no IPv4 address but loopback")
	}
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	log := new(testlog.Buffer)
	cfg := collective.Config{Size: 2, Addr: addr, Token: "t", Timeout: testTimeout, Logger: log.Lines()}
	rank0 := startRank(cfg, 0)
	log.WaitFor(t, "ringo rendezvous: rank registered", testTimeout) // rank 0 serves
	_, err = net.DialTimeout("tcp", net.JoinHostPort(other, port), 5*time.Second)
	require.Error(t, err, "the rendezvous at %s answered on %s", addr, other)

	rank1 := startRank(cfg, 1)
	for _, ch := range []<-chan formed{rank0, rank1} {
		require.NoError(t, await(t, ch).err)
	}
}

// One rank of four holds the wrong token (the first-hour case):
// the rendezvous server reports it at once, names the missing rank every
// few seconds, the bad rank's error names the rendezvous server (not "rank
// -1"), and every other rank's timeout names the missing rank.
func TestFormingTimeoutNamesTheMissingRank(t *testing.T) {
	const n = 4
	addr := freeAddr(t)
	log := new(testlog.Buffer)
	cfg := collective.Config{Size: n, Addr: addr, Token: "right", Timeout: 3 * time.Second, Logger: log.Lines()}
	waiting := []<-chan formed{startRank(cfg, 0), startRank(cfg, 1), startRank(cfg, 3)}
	log.WaitFor(t, "INFO ringo rendezvous: 3 of 4 ranks joined (0-1,3); waiting for rank 2 rank=0", testTimeout)

	bad := cfg
	bad.Token = "wrong"
	f := await(t, startRank(bad, 2))
	require.ErrorIs(t, f.err, collective.ErrAuth)
	assert.Contains(t, f.err.Error(), "the rendezvous server could not prove it holds the job token")
	assert.NotContains(t, f.err.Error(), "rank -1")
	log.WaitFor(t, "WARN ringo rendezvous: a connection from 127.0.0.1 (claiming rank 2) failed the token check while rank 2 is missing", testTimeout)

	for _, ch := range waiting {
		f := await(t, ch)
		require.ErrorIs(t, f.err, collective.ErrTimeout)
		// Whether the rank gave up first or heard that the server did, it
		// names the missing rank.
		assert.Contains(t, f.err.Error(), "still waiting for rank 2 (3 of 4 ranks had joined)")
	}
}
