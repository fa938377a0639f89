package rendezvous

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/internal/testlog"
	"github.com/ringo-ml/ringo/transport"
)

// TestMain checks that no test leaves a goroutine behind: Serve and Join
// end every one they start.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitBound bounds every wait in these tests; nothing here should take
// more than a fraction of it.
const waitBound = 20 * time.Second

func jobID(size int) transport.Identity {
	return transport.Identity{Token: []byte("the job token"), Job: "job-7", Size: size}
}

// advertised is what rank r publishes in these tests (never dialled).
func advertised(r int) string { return fmt.Sprintf("rank%d.test:%d", r, 7000+r) }

// server is one ServeWith running on a loopback listener.
type server struct {
	addr       string
	ln         net.Listener
	cancel     context.CancelCauseFunc
	done       chan error
	registered chan [2]string // rank and address, in the order OnRegister saw them
	log        *testlog.Buffer
}

func startServer(t *testing.T, id transport.Identity) *server {
	t.Helper()
	ln, err := transport.ListenTCP(context.Background(), "127.0.0.1:0")
	require.NoError(t, err)
	return serveOn(t, ln, id)
}

func serveOn(t *testing.T, ln net.Listener, id transport.Identity) *server {
	t.Helper()
	return serveOnWith(t, ln, id, 0)
}

// serveOnWith is serveOn with ServeOptions.Progress.
func serveOnWith(t *testing.T, ln net.Listener, id transport.Identity, progress time.Duration) *server {
	t.Helper()
	ctx, cancel := context.WithCancelCause(context.Background())
	s := &server{
		addr:       ln.Addr().String(),
		ln:         ln,
		cancel:     cancel,
		done:       make(chan error, 1),
		registered: make(chan [2]string, 4*id.Size),
		log:        new(testlog.Buffer),
	}
	opts := ServeOptions{
		Progress: progress,
		Log:      s.log.Logger(slog.LevelDebug),
		OnRegister: func(rank int, addr string) {
			s.registered <- [2]string{fmt.Sprint(rank), addr}
		},
	}
	go func() { s.done <- ServeWith(ctx, ln, id, opts) }()
	t.Cleanup(func() {
		cancel(errors.New("test over"))
		<-s.done
		_ = ln.Close()
	})
	return s
}

// wait returns Serve's result.
func (s *server) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
		return err
	case <-time.After(waitBound):
		require.FailNow(t, "Serve did not return")
		return nil
	}
}

// nextRegistered returns what OnRegister was called with next.
func (s *server) nextRegistered(t *testing.T) [2]string {
	t.Helper()
	select {
	case r := <-s.registered:
		return r
	case <-time.After(waitBound):
		require.FailNow(t, "no rank registered")
		return [2]string{}
	}
}

type joinResult struct {
	addrs []string
	err   error
}

// join starts rank's Join in the background (with id's token and job).
func join(ctx context.Context, addr string, id transport.Identity, rank int) <-chan joinResult {
	id.Rank = rank
	res := make(chan joinResult, 1)
	go func() {
		addrs, err := Join(ctx, addr, id, func(local net.Addr) (string, error) {
			if host, _, err := net.SplitHostPort(local.String()); err != nil || host != "127.0.0.1" {
				return "", fmt.Errorf("joined from %v, not from loopback", local)
			}
			return advertised(rank), nil
		})
		res <- joinResult{addrs, err}
	}()
	return res
}

func result(t *testing.T, ch <-chan joinResult) joinResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(waitBound):
		require.FailNow(t, "Join did not return")
		return joinResult{}
	}
}

func wantTable(n int) []string {
	want := make([]string, n)
	for r := range want {
		want[r] = advertised(r)
	}
	return want
}

// joinAll joins ranks (of a job of id.Size) and checks that every one
// gets the whole table, in rank order.
func joinAll(t *testing.T, s *server, id transport.Identity, ranks ...int) {
	t.Helper()
	results := make([]<-chan joinResult, len(ranks))
	for i, r := range ranks {
		results[i] = join(t.Context(), s.addr, id, r)
	}
	for i, ch := range results {
		res := result(t, ch)
		require.NoError(t, res.err, "rank %d", ranks[i])
		assert.Equal(t, wantTable(id.Size), res.addrs, "rank %d", ranks[i])
	}
}

func TestAllRanksGetTheTable(t *testing.T) {
	const n = 8
	id := jobID(n)
	s := startServer(t, id)
	joinAll(t, s, id, 7, 0, 3, 5, 1, 6, 2, 4)
	require.NoError(t, s.wait(t))

	// OnRegister saw every rank once, with its address.
	seen := map[string]string{}
	for range n {
		r := s.nextRegistered(t)
		assert.NotContains(t, seen, r[0], "rank %s registered twice", r[0])
		seen[r[0]] = r[1]
	}
	for r := range n {
		assert.Equal(t, advertised(r), seen[fmt.Sprint(r)])
	}
	assert.Empty(t, s.registered)
}

func TestServeAgainOnTheSameListener(t *testing.T) {
	ln, err := transport.ListenTCP(context.Background(), "127.0.0.1:0")
	require.NoError(t, err)
	for job := range 2 {
		id := jobID(3)
		id.Job = fmt.Sprint("job-", job)
		s := serveOn(t, ln, id)
		joinAll(t, s, id, 0, 1, 2)
		require.NoError(t, s.wait(t), "job %d", job)
	}
}

func TestWrongTokenIsRefused(t *testing.T) {
	const n = 3
	id := jobID(n)
	s := startServer(t, id)

	bad := id
	bad.Token = []byte("not the job token")
	res := result(t, join(t.Context(), s.addr, bad, 1))
	require.ErrorIs(t, res.err, transport.ErrAuth)
	assert.Nil(t, res.addrs)
	assert.Contains(t, res.err.Error(), "the rendezvous server could not prove it holds the job token")
	assert.NotContains(t, res.err.Error(), "rank -1", "the server is no rank")

	// The impostor took nobody's place: the real ranks, rank 1 included, form.
	joinAll(t, s, id, 0, 1, 2)
	require.NoError(t, s.wait(t))
	assert.Contains(t, s.log.String(), "a connection from 127.0.0.1 (claiming rank 1) failed the token check while ranks 0-2 are missing")
}

func TestDuplicateRankIsRefused(t *testing.T) {
	const n = 3
	id := jobID(n)
	s := startServer(t, id)

	first := join(t.Context(), s.addr, id, 1)
	assert.Equal(t, [2]string{"1", advertised(1)}, s.nextRegistered(t))

	dup := result(t, join(t.Context(), s.addr, id, 1))
	require.Error(t, dup.err)
	assert.Contains(t, dup.err.Error(), "refused rank 1: rank 1 is already registered")
	assert.Nil(t, dup.addrs)

	joinAll(t, s, id, 0, 2)
	res := result(t, first)
	require.NoError(t, res.err)
	assert.Equal(t, wantTable(n), res.addrs)
	require.NoError(t, s.wait(t))
	assert.Len(t, s.registered, n-1, "the duplicate was not reported as registered")
}

func TestServeReturnsWhenCancelled(t *testing.T) {
	id := jobID(3)
	s := startServer(t, id)

	ctx, cancelJoin := context.WithCancel(t.Context())
	defer cancelJoin()
	waiting := join(ctx, s.addr, id, 0)
	s.nextRegistered(t)

	stop := errors.New("the launcher stops the job")
	s.cancel(stop)
	err := s.wait(t)
	require.ErrorIs(t, err, stop)
	assert.Contains(t, err.Error(), "rendezvous: ")

	// The registered rank is told that the server gave up, and why: it
	// names the ranks that had not joined.
	res := result(t, waiting)
	require.Error(t, res.err)
	assert.Contains(t, res.err.Error(), "the rendezvous server at "+s.addr+" gave up: the launcher stops the job: still waiting for ranks 1-2 (1 of 3 ranks had joined)")
}

func TestStrangerIsIgnored(t *testing.T) {
	const n = 2
	id := jobID(n)
	s := startServer(t, id)

	// One stranger sends a long line of garbage, another connects and says
	// nothing; neither holds up the job.
	garbage, err := net.Dial("tcp", s.addr)
	require.NoError(t, err)
	defer garbage.Close()
	silent, err := net.Dial("tcp", s.addr)
	require.NoError(t, err)
	defer silent.Close()
	_, err = garbage.Write(bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 32))
	require.NoError(t, err)
	// The server hangs up on the garbage without answering it.
	require.NoError(t, garbage.SetReadDeadline(time.Now().Add(waitBound)))
	n0, err := io.Copy(io.Discard, garbage)
	if err != nil { // a reset, as the server closed with garbage unread
		require.ErrorIs(t, err, syscall.ECONNRESET, "the server hangs up at once")
	}
	assert.Zero(t, n0)

	joinAll(t, s, id, 0, 1)
	require.NoError(t, s.wait(t))
	assert.Contains(t, s.log.String(), "refused a connection")
	assert.Len(t, s.registered, n)
}

// While ranks are missing, the server says every Progress which have joined
// and which not, and tells the waiting ranks: a rank that gives up names the
// ranks the server was still waiting for.
func TestProgressNamesTheMissingRanks(t *testing.T) {
	const n = 4
	id := jobID(n)
	ln, err := transport.ListenTCP(context.Background(), "127.0.0.1:0")
	require.NoError(t, err)
	s := serveOnWith(t, ln, id, 50*time.Millisecond)

	// The ranks give up after a second, long after the first progress
	// message (50 ms) reached them.
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	waiting := []<-chan joinResult{join(ctx, s.addr, id, 0), join(ctx, s.addr, id, 1), join(ctx, s.addr, id, 3)}
	s.log.WaitFor(t, "ringo rendezvous: 3 of 4 ranks joined (0-1,3); waiting for rank 2", waitBound)
	for _, ch := range waiting {
		res := result(t, ch)
		require.ErrorIs(t, res.err, context.DeadlineExceeded)
		assert.Contains(t, res.err.Error(), "the rendezvous server at "+s.addr+": context deadline exceeded: still waiting for rank 2 (3 of 4 ranks had joined)")
	}
	s.cancel(errors.New("the job timed out"))
	err = s.wait(t)
	assert.Contains(t, err.Error(), "rendezvous: the job timed out: still waiting for rank 2 (3 of 4 ranks had joined)")
}

// A server that gives up tells the waiting ranks why, in words and in
// class: a rank's error matches the sentinel of the server's reason.
func TestServerThatGivesUpPassesOnTheClassOfItsReason(t *testing.T) {
	for _, cause := range []error{transport.ErrTimeout, context.DeadlineExceeded, context.Canceled} {
		id := jobID(2)
		s := startServer(t, id)
		waiting := join(t.Context(), s.addr, id, 1)
		s.nextRegistered(t)
		s.cancel(fmt.Errorf("%w: forming took too long", cause))
		require.ErrorIs(t, s.wait(t), cause)
		res := result(t, waiting)
		require.ErrorIs(t, res.err, cause)
		assert.Contains(t, res.err.Error(), "gave up: ")
		assert.Contains(t, res.err.Error(), "forming took too long: still waiting for rank 0 (1 of 2 ranks had joined)")
	}
}

// A rank of another job at this job's rendezvous (two jobs given the same
// address) is refused, reported once by the server, and keeps trying: it
// joins its own job's rendezvous once that has the port.
func TestRankOfAnotherJobWaitsForItsOwnRendezvous(t *testing.T) {
	idA, idB := jobID(2), jobID(2)
	idA.Job, idB.Job = "job-A", "job-B"
	idB.Token = []byte("job B's token")
	ln, err := transport.ListenTCP(context.Background(), "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	a := serveOnWith(t, ln, idA, time.Hour)
	aFirst := join(t.Context(), addr, idA, 0)
	a.nextRegistered(t)

	// B's rank 1 finds A's server. Give up after a while, to read why.
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	res := result(t, join(ctx, addr, idB, 1))
	require.ErrorIs(t, res.err, transport.ErrOtherJob)
	assert.Contains(t, res.err.Error(), `the rendezvous server at `+addr+` serves another job than this rank's (job id "job-B"): is another job using this port?`)
	a.log.WaitFor(t, `ringo rendezvous: a rank of another job (rank 1 of 2, from 127.0.0.1) tried to join job \"job-A\"; is another job using this port?`, waitBound)
	assert.Equal(t, 1, strings.Count(a.log.String(), "a rank of another job"), "B's retries are reported once per interval")

	// B's rank 1 tries again, for as long as it takes A to form and B's
	// server to take the port.
	bRank1 := join(t.Context(), addr, idB, 1)
	aSecond := join(t.Context(), addr, idA, 1)
	for _, ch := range []<-chan joinResult{aFirst, aSecond} {
		r := result(t, ch)
		require.NoError(t, r.err)
		assert.Equal(t, wantTable(2), r.addrs)
	}
	require.NoError(t, a.wait(t))
	require.NoError(t, ln.Close())
	lnB, err := transport.ListenTCP(context.Background(), addr)
	require.NoError(t, err)
	b := serveOn(t, lnB, idB)
	bRank0 := join(t.Context(), addr, idB, 0)
	for _, ch := range []<-chan joinResult{bRank0, bRank1} {
		r := result(t, ch)
		require.NoError(t, r.err)
		assert.Equal(t, wantTable(2), r.addrs)
	}
	require.NoError(t, b.wait(t))
}

func TestFormatRanks(t *testing.T) {
	many := make([]int, 0, 40)
	for r := 0; r < 80; r += 2 {
		many = append(many, r)
	}
	for _, tc := range []struct {
		ranks []int
		want  string
	}{
		{nil, "none"},
		{[]int{2}, "2"},
		{[]int{0, 1, 2, 3}, "0-3"},
		{[]int{0, 1, 3, 5, 6, 7, 9}, "0-1,3,5-7,9"},
		{many, "0,2,4,6,8,10,12,14,16,18,20,22,24,26,28,30,… (24 more)"},
	} {
		assert.Equal(t, tc.want, formatRanks(tc.ranks), "%v", tc.ranks)
	}
	assert.Equal(t, "rank 2", ranksNoun([]int{2}))
	assert.Equal(t, "ranks 2-3", ranksNoun([]int{2, 3}))
	assert.Equal(t, "rank 2 is missing", missingPhrase([]int{2}))
	assert.Equal(t, "ranks 1,4 are missing", missingPhrase([]int{1, 4}))
}
