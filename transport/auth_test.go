package transport_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/testlog"
	"github.com/ringo-ml/ringo/transport"
)

// The identities of a server and its clients, which are not ranks of a job
// (a federated server and its clients).
var (
	authServerID = transport.Identity{Token: []byte("s3cret"), Job: "auth-test", Rank: 0, Purpose: transport.PurposeFederated}
	authClientID = transport.Identity{Token: []byte("s3cret"), Job: "auth-test", Rank: -1, Purpose: transport.PurposeFederated}
)

// listenAuth makes an AuthListener on a network made by nw, listening on
// loopback, with allow judging client certificates (nil: any) and the
// refusals logged into the returned buffer. It is closed when the test
// ends.
func listenAuth(t *testing.T, nw func(testing.TB) transport.Network, allow func(string) error, opts transport.AuthOptions) (*transport.AuthListener, *testlog.Buffer) {
	t.Helper()
	if allow == nil {
		allow = func(string) error { return nil }
	}
	n := nw(t)
	t.Cleanup(func() { _ = n.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
	defer cancel()
	ln, err := n.Listen(ctx, "127.0.0.1:0", allow)
	require.NoError(t, err)
	logs := new(testlog.Buffer)
	opts.Log = logs.Logger(slog.LevelInfo)
	al := transport.NewAuthListener(ln, authServerID, opts)
	t.Cleanup(func() { _ = al.Close() })
	return al, logs
}

// clientNetwork makes a dialer's network, closed when the test ends.
func clientNetwork(t *testing.T, nw func(testing.TB) transport.Network) transport.Network {
	n := nw(t)
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// authPair makes a pair through an AuthListener and DialAuth over the
// network nw makes, for the conformance suite.
func authPair(nw func(testing.TB) transport.Network) pairMaker {
	return func(t *testing.T) (transport.Stream, transport.Stream) {
		ln, _ := listenAuth(t, nw, nil, transport.AuthOptions{})
		ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
		defer cancel()
		c, _, err := transport.DialAuth(ctx, clientNetwork(t, nw), ln.Endpoint(), authClientID)
		require.NoError(t, err)
		s, _, err := ln.Accept(ctx)
		require.NoError(t, err)
		cleanup(t, c, s)
		return c, s
	}
}

// requireNothingAdmitted fails unless Accept finds no stream for a while.
func requireNothingAdmitted(t *testing.T, ln *transport.AuthListener) {
	t.Helper()
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	s, _, err := ln.Accept(short)
	if s != nil {
		_ = s.Close()
	}
	require.ErrorIs(t, err, context.DeadlineExceeded, "nothing may be admitted")
}

func requireLogged(t *testing.T, logs *testlog.Buffer, want ...string) {
	t.Helper()
	for _, w := range want {
		logs.WaitFor(t, w, confTimeout)
	}
}

// Both sides learn what the other said about itself, and the streams carry
// what is written on them next (the conformance suite has the rest).
func TestAuthAdmits(t *testing.T) {
	for _, nw := range networks {
		t.Run(nw.name, func(t *testing.T) {
			ln, _ := listenAuth(t, nw.make, nil, transport.AuthOptions{})
			ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
			defer cancel()
			id := authClientID
			id.Rank, id.Size, id.Channel = 7, 9, 0xfed
			c, h, err := transport.DialAuth(ctx, clientNetwork(t, nw.make), ln.Endpoint(), id)
			require.NoError(t, err)
			s, hs, err := ln.Accept(ctx)
			require.NoError(t, err)
			cleanup(t, c, s)
			assert.Equal(t, transport.Hello{Version: transport.ProtocolVersion, Purpose: transport.PurposeFederated, Rank: 0}, h)
			assert.Equal(t, transport.Hello{Version: transport.ProtocolVersion, Purpose: transport.PurposeFederated, Rank: 7, Size: 9, Channel: 0xfed}, hs)
			if nw.name != "tcp" {
				_, ok := transport.PeerFingerprint(s)
				assert.True(t, ok, "a TLS stream names the client's certificate")
			}
			_, err = c.Write([]byte("after"))
			require.NoError(t, err)
			got := make([]byte, 5)
			_, err = s.Read(got)
			require.NoError(t, err)
			assert.Equal(t, "after", string(got))
		})
	}
}

// Dialers that do not prove the token, name another job or purpose, speak
// another protocol or that Check refuses are refused and logged, never
// admitted; the listener goes on admitting the others.
func TestAuthRefuses(t *testing.T) {
	refuseRank3 := func(_ transport.Stream, h transport.Hello) error {
		if h.Rank == 3 {
			return errors.New("no room for rank 3")
		}
		return nil
	}
	cases := []struct {
		name   string
		id     func(transport.Identity) transport.Identity // nil: a stranger
		client error                                       // what DialAuth's error wraps
		says   string                                      // what both sides report
	}{
		{"wrong token", func(id transport.Identity) transport.Identity { id.Token = []byte("guess"); return id },
			transport.ErrAuth, "prove"},
		{"other job", func(id transport.Identity) transport.Identity { id.Job = "another"; return id },
			transport.ErrOtherJob, "different job id"},
		{"other purpose", func(id transport.Identity) transport.Identity { id.Purpose = transport.PurposePeer; return id },
			transport.ErrProtocol, "connection for peer, this side expects federated"},
		{"refused by Check", func(id transport.Identity) transport.Identity { id.Rank = 3; return id },
			nil, "no room for rank 3"},
		{"stranger", nil, nil, "not a ringo handshake"},
	}
	for _, nw := range networks {
		t.Run(nw.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					ln, logs := listenAuth(t, nw.make, nil, transport.AuthOptions{Check: refuseRank3})
					ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
					defer cancel()
					client := clientNetwork(t, nw.make)
					if tc.id == nil {
						s, err := client.Dial(ctx, ln.Endpoint())
						require.NoError(t, err)
						_, _ = s.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
						_, err = s.Read(make([]byte, 1))
						require.Error(t, err, "the listener hangs up")
						_ = s.Close()
					} else {
						_, _, err := transport.DialAuth(ctx, client, ln.Endpoint(), tc.id(authClientID))
						require.Error(t, err)
						if tc.client != nil {
							require.ErrorIs(t, err, tc.client)
						}
						require.ErrorContains(t, err, tc.says)
					}
					requireLogged(t, logs, `refused a connection" purpose=federated`, tc.says)
					requireNothingAdmitted(t, ln)

					c, _, err := transport.DialAuth(ctx, client, ln.Endpoint(), authClientID)
					require.NoError(t, err, "the listener still admits the job's clients")
					s, _, err := ln.Accept(ctx)
					require.NoError(t, err)
					cleanup(t, c, s)
				})
			}
		})
	}
}

// On a TLS network a dialer accepts only the listener whose certificate it
// was told, and the listener only the dialers allow approves.
func TestAuthChecksCertificates(t *testing.T) {
	other := newCert(t)
	for _, nw := range networks[1:] { // tcp+tls, quic
		t.Run(nw.name, func(t *testing.T) {
			t.Run("wrong server", func(t *testing.T) {
				ln, _ := listenAuth(t, nw.make, nil, transport.AuthOptions{})
				ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
				defer cancel()
				to := transport.Endpoint{Addr: ln.Endpoint().Addr, Fingerprint: other.Fingerprint()}
				_, _, err := transport.DialAuth(ctx, clientNetwork(t, nw.make), to, authClientID)
				require.ErrorIs(t, err, transport.ErrAuth)
				requireNothingAdmitted(t, ln)
			})
			t.Run("client refused", func(t *testing.T) {
				ln, logs := listenAuth(t, nw.make, transport.ExpectFingerprint(other.Fingerprint()), transport.AuthOptions{})
				ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
				defer cancel()
				_, _, err := transport.DialAuth(ctx, clientNetwork(t, nw.make), ln.Endpoint(), authClientID)
				require.Error(t, err)
				requireLogged(t, logs, "refused a connection", "is not the one it registered")
				requireNothingAdmitted(t, ln)
			})
		})
	}
}

// A dialer that says nothing holds up only itself, until Timeout refuses
// it; Close interrupts the handshakes in progress and ends every Accept.
func TestAuthSilentDialersAndClose(t *testing.T) {
	for _, nw := range networks {
		t.Run(nw.name, func(t *testing.T) {
			ln, logs := listenAuth(t, nw.make, nil, transport.AuthOptions{Timeout: time.Hour})
			ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
			defer cancel()
			client := clientNetwork(t, nw.make)
			silent, err := client.Dial(ctx, ln.Endpoint())
			require.NoError(t, err)
			defer silent.Close()

			c, _, err := transport.DialAuth(ctx, client, ln.Endpoint(), authClientID)
			require.NoError(t, err, "a silent dialer holds up only itself")
			s, _, err := ln.Accept(ctx)
			require.NoError(t, err)
			cleanup(t, c, s)

			accepting := make(chan error, 1)
			go func() {
				_, _, err := ln.Accept(context.Background())
				accepting <- err
			}()
			closed := make(chan error, 1)
			go func() { closed <- ln.Close() }()
			select {
			case err := <-closed:
				require.NoError(t, err)
			case <-time.After(confTimeout):
				t.Fatal("Close waited for the silent dialer's handshake")
			}
			select {
			case err := <-accepting:
				require.ErrorIs(t, err, transport.ErrClosed)
			case <-time.After(confTimeout):
				t.Fatal("Close did not end a waiting Accept")
			}
			_, _, err = ln.Accept(ctx)
			require.ErrorIs(t, err, transport.ErrClosed)
			_, err = silent.Read(make([]byte, 1))
			require.Error(t, err, "the silent dialer was hung up on")
			assert.NotContains(t, logs.String(), "refused", "what Close cut short is no refusal")

			cancelled, cancelNow := context.WithCancel(context.Background())
			cancelNow()
			_, _, err = ln.Accept(cancelled)
			require.Error(t, err)
		})
	}
	t.Run("timeout", func(t *testing.T) {
		ln, logs := listenAuth(t, networks[0].make, nil, transport.AuthOptions{Timeout: 50 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
		defer cancel()
		silent, err := clientNetwork(t, networks[0].make).Dial(ctx, ln.Endpoint())
		require.NoError(t, err)
		defer silent.Close()
		_ = silent.SetReadDeadline(time.Now().Add(confTimeout))
		_, err = silent.Read(make([]byte, 1))
		require.ErrorIs(t, err, io.EOF, "the listener hung up")
		requireLogged(t, logs, "refused a connection", "timeout")
	})
}

// DialAuth gives up when its context ends, even if the listener never
// answers.
func TestDialAuthHonoursContext(t *testing.T) {
	for _, nw := range networks {
		t.Run(nw.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), confTimeout)
			defer cancel()
			server := clientNetwork(t, nw.make)
			ln, err := server.Listen(ctx, "127.0.0.1:0", nil)
			require.NoError(t, err)
			defer ln.Close()
			accepted := make(chan transport.Stream, 1)
			go func() {
				s, _ := ln.Accept(ctx)
				accepted <- s // and never says anything
			}()
			dctx, stop := context.WithCancel(ctx)
			go func() {
				if s := <-accepted; s != nil {
					defer s.Close()
				}
				stop()
			}()
			_, _, err = transport.DialAuth(dctx, clientNetwork(t, nw.make), ln.Endpoint(), authClientID)
			require.ErrorIs(t, err, context.Canceled)
		})
	}
}
