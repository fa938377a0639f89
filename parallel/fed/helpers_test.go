package fed

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	testToken = []byte("federated test token")
	testJob   = "fed-test"
)

// testTimeout bounds whole tests' waits: a hang fails instead of stalling.
const testTimeout = 60 * time.Second

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// startServer makes a server on a loopback port with the test token and
// closes it when the test ends.
func startServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Token == nil {
		cfg.Token = testToken
	}
	if cfg.Job == "" {
		cfg.Job = testJob
	}
	if cfg.Logger == nil {
		cfg.Logger = discardLogger()
	}
	if cfg.RoundTimeout == 0 {
		cfg.RoundTimeout = testTimeout
	}
	srv, err := NewServer(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

// clientSet runs clients on goroutines.
type clientSet struct {
	wg     sync.WaitGroup
	cancel context.CancelFunc
	mu     sync.Mutex
	errs   map[string]error
}

// runClients starts one client per name against srv; cfg is the template
// (Fit is made per name by fit). They stop when the test ends.
func runClients(t testing.TB, srv *Server, names []string, cfg ClientConfig, fit func(name string) FitFunc) *clientSet {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cs := &clientSet{cancel: cancel, errs: make(map[string]error)}
	t.Cleanup(cs.stop)
	for _, name := range names {
		c := cfg
		c.Addr, c.Name, c.Fit = srv.Addr(), name, fit(name)
		if c.Transport == "" {
			c.Transport = srv.cfg.Transport
		}
		if c.ServerFingerprint == "" {
			c.ServerFingerprint = srv.Fingerprint()
		}
		if c.Token == nil {
			c.Token = testToken
		}
		if c.Job == "" {
			c.Job = testJob
		}
		if c.Logger == nil {
			c.Logger = discardLogger()
		}
		if c.MinBackoff == 0 {
			c.MinBackoff = 5 * time.Millisecond
			c.MaxBackoff = 50 * time.Millisecond
		}
		client, err := NewClient(c)
		require.NoError(t, err)
		cs.wg.Add(1)
		go func() {
			defer cs.wg.Done()
			err := client.Run(ctx)
			cs.mu.Lock()
			cs.errs[name] = err
			cs.mu.Unlock()
		}()
	}
	return cs
}

func (cs *clientSet) stop() {
	cs.cancel()
	cs.wg.Wait()
}

// wait waits for every client's Run to return and returns their errors.
func (cs *clientSet) wait() map[string]error {
	cs.wg.Wait()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.errs
}

func names(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("c%02d", i)
	}
	return s
}

// fakeClient speaks the protocol by hand, to send what a Client never
// would.
type fakeClient struct {
	t     testing.TB
	w     *wire
	id    uint64
	limit int // for tests that need it
}

func dialFake(t testing.TB, srv *Server, name string) *fakeClient {
	t.Helper()
	ctx := testContext(t)
	st, err := dial(ctx, srv.cfg.Transport, srv.Addr(), srv.Fingerprint(), mustCert(t, srv.cfg.Transport), testToken, testJob)
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	f := &fakeClient{t: t, w: newWire(st)}
	f.send(&joinMsg{Name: name})
	m := f.recv()
	require.IsType(t, &welcomeMsg{}, m)
	f.id = m.(*welcomeMsg).ID
	return f
}

func mustCert(t testing.TB, tr Transport) *transport.Certificate {
	if !tr.secure() {
		return nil
	}
	c, err := transport.NewCertificate()
	require.NoError(t, err)
	return c
}

func (f *fakeClient) send(m message) {
	f.t.Helper()
	require.NoError(f.t, f.w.send(m, testTimeout))
}

// sendRaw sends a payload under any kind.
func (f *fakeClient) sendRaw(k msgKind, payload []byte) {
	f.t.Helper()
	require.NoError(f.t, f.w.sendPayload(k, 0, payload, testTimeout))
}

func (f *fakeClient) recv() message {
	f.t.Helper()
	f.w.setReadDeadline(time.Now().Add(testTimeout))
	m, err := f.w.recv(func(msgKind) int { return transport.MaxPayload })
	require.NoError(f.t, err)
	return m
}

// recvFit skips to the next fit message.
func (f *fakeClient) recvFit() *fitMsg {
	f.t.Helper()
	for {
		if m, ok := f.recv().(*fitMsg); ok {
			return m
		}
	}
}

func (f *fakeClient) close() { _ = f.w.close() }

// waitJoined waits until the server has n clients connected.
func waitJoined(t testing.TB, srv *Server, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		srv.liveMu.Lock()
		defer srv.liveMu.Unlock()
		return len(srv.live) >= n
	}, testTimeout, 2*time.Millisecond)
}
