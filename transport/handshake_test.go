package transport

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	testToken  = "t0k3n-that-must-never-cross-the-wire-5f3a9c"
	otherToken = "another-t0k3n-that-must-not-be-sent-either"
	testJob    = "job-2024-11-23"
)

func peerID(token string, rank, size int) Identity {
	return Identity{Token: []byte(token), Job: testJob, Rank: rank, Size: size, Purpose: PurposePeer}
}

type hsOut struct {
	hello Hello
	err   error
}

// runHandshake runs ClientHandshake on cs and ServerHandshake on ss at the
// same time, each side closing its stream on failure as real callers do. All
// bytes either side writes are recorded in rec.
func runHandshake(t *testing.T, cs, ss Stream, cid, sid Identity, accept func(Hello) error) (client, server hsOut, rec *recorder) {
	t.Helper()
	rec = &recorder{}
	cs, ss = recordingStream{cs, rec}, recordingStream{ss, rec}
	srv := make(chan hsOut, 1)
	go func() {
		h, err := ServerHandshake(ss, sid, testDeadline(), accept)
		if err != nil {
			_ = ss.Close()
		}
		srv <- hsOut{h, err}
	}()
	h, err := ClientHandshake(cs, cid, testDeadline())
	if err != nil {
		_ = cs.Close()
	}
	client = hsOut{h, err}
	select {
	case server = <-srv:
	case <-time.After(testTimeout):
		t.Fatal("ServerHandshake did not return")
	}
	return client, server, rec
}

func assertNoToken(t *testing.T, wire []byte, tokens ...string) {
	t.Helper()
	require.NotEmpty(t, wire)
	for _, tok := range tokens {
		assert.False(t, bytes.Contains(wire, []byte(tok)), "the token %q crossed the wire", tok)
	}
}

func TestHandshakeSuccess(t *testing.T) {
	for _, sk := range streamKinds {
		t.Run(sk.name, func(t *testing.T) {
			for _, tc := range []struct {
				name     string
				cid, sid Identity
			}{
				{"peer", peerID(testToken, 2, 4), peerID(testToken, 0, 4)},
				{"peer on a channel", withChannel(peerID(testToken, 3, 4), 0xfeedbeef01), withChannel(peerID(testToken, 1, 4), 0xfeedbeef01)},
				{"rendezvous without rank", Identity{Token: []byte(testToken), Job: testJob, Rank: -1, Size: 8, Purpose: PurposeRendezvous},
					Identity{Token: []byte(testToken), Job: testJob, Rank: -1, Size: 8, Purpose: PurposeRendezvous}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					cs, ss := sk.pair(t)
					var accepted []Hello
					c, s, rec := runHandshake(t, cs, ss, tc.cid, tc.sid, func(h Hello) error {
						accepted = append(accepted, h)
						return nil
					})
					require.NoError(t, c.err)
					require.NoError(t, s.err)
					assert.Equal(t, Hello{Version: ProtocolVersion, Purpose: tc.sid.Purpose, Rank: tc.sid.Rank, Size: tc.sid.Size, Channel: tc.sid.Channel}, c.hello,
						"the client learns the server's rank and size")
					wantClient := Hello{Version: ProtocolVersion, Purpose: tc.cid.Purpose, Rank: tc.cid.Rank, Size: tc.cid.Size, Channel: tc.cid.Channel}
					assert.Equal(t, wantClient, s.hello, "the server learns the client's rank and size")
					assert.Equal(t, []Hello{wantClient}, accepted, "accept is called once, with the client's hello")
					assertNoToken(t, rec.bytes(), testToken)

					// The handshake leaves the stream ready for frames, with no
					// deadline left behind.
					errc := make(chan error, 1)
					go func() {
						h := Header{Type: Data, Comm: 1}
						errc <- NewConn(cs).WriteFrame(&h, []byte("after handshake"))
					}()
					r := NewConn(ss)
					var h Header
					require.NoError(t, r.ReadHeader(&h))
					p := make([]byte, h.Len)
					require.NoError(t, r.ReadPayload(p))
					assert.Equal(t, "after handshake", string(p))
					require.NoError(t, recvErr(t, errc, "frame write"))
				})
			}
		})
	}
}

func TestHandshakeNilAccept(t *testing.T) {
	cs, ss := pipePair(t)
	c, s, _ := runHandshake(t, cs, ss, peerID(testToken, 1, 2), peerID(testToken, 0, 2), nil)
	require.NoError(t, c.err)
	require.NoError(t, s.err)
	assert.Equal(t, 1, s.hello.Rank)
}

func TestHandshakeWrongToken(t *testing.T) {
	for _, sk := range streamKinds {
		t.Run(sk.name, func(t *testing.T) {
			cs, ss := sk.pair(t)
			accepted := false
			c, s, rec := runHandshake(t, cs, ss, peerID(otherToken, 1, 2), peerID(testToken, 0, 2), func(Hello) error {
				accepted = true
				return nil
			})
			require.ErrorIs(t, c.err, ErrAuth)
			assert.Contains(t, c.err.Error(), "could not prove it holds the job token")
			assert.Contains(t, c.err.Error(), "rank 0", "the client names the rank that failed to prove the token")
			require.Error(t, s.err, "the server must not accept a client with another token")
			assert.False(t, accepted, "accept must not run for an unauthenticated client")
			assertNoToken(t, rec.bytes(), testToken, otherToken)
		})
	}
}

// The server side of a wrong-token handshake should report ErrAuth too, so
// that the refusal can be logged as what it is.
func TestHandshakeWrongTokenServerReportsAuth(t *testing.T) {
	for _, sk := range streamKinds {
		t.Run(sk.name, func(t *testing.T) {
			cs, ss := sk.pair(t)
			c, s, _ := runHandshake(t, cs, ss, peerID(otherToken, 1, 2), peerID(testToken, 0, 2), nil)
			require.ErrorIs(t, c.err, ErrAuth)
			require.ErrorIs(t, s.err, ErrAuth)
			assert.Contains(t, s.err.Error(), "job token")
		})
	}
}

// rawClient plays the client side of the handshake by hand, so that tests can
// send what a correct client never would.
type rawClient struct {
	t     *testing.T
	s     Stream
	hello hello
	sent  []byte
}

func newRawClient(t *testing.T, s Stream, id Identity, mutate func(*hello)) *rawClient {
	h, err := newHello(id, statusOK)
	require.NoError(t, err)
	if mutate != nil {
		mutate(&h)
	}
	return &rawClient{t: t, s: s, hello: h, sent: h.encode()}
}

func (c *rawClient) sendHello() {
	_, err := c.s.Write(c.sent)
	require.NoError(c.t, err)
}

func (c *rawClient) readHello() (hello, []byte) {
	b := make([]byte, helloSize)
	_, err := io.ReadFull(c.s, b)
	require.NoError(c.t, err)
	h, err := decodeHello(b)
	require.NoError(c.t, err)
	return h, b
}

func (c *rawClient) readStatusAndReason() (byte, string) {
	var st [1]byte
	_, err := io.ReadFull(c.s, st[:])
	require.NoError(c.t, err)
	return st[0], readReason(c.s)
}

func serveAsync(s Stream, id Identity, accept func(Hello) error) <-chan hsOut {
	ch := make(chan hsOut, 1)
	go func() {
		h, err := ServerHandshake(s, id, testDeadline(), accept)
		ch <- hsOut{h, err}
	}()
	return ch
}

func TestHandshakeServerRefusesForgedProof(t *testing.T) {
	for _, sk := range streamKinds {
		t.Run(sk.name, func(t *testing.T) {
			cs, ss := sk.pair(t)
			accepted := false
			srv := serveAsync(ss, peerID(testToken, 0, 2), func(Hello) error { accepted = true; return nil })
			c := newRawClient(t, cs, peerID(otherToken, 1, 2), nil)
			c.sendHello()
			sh, shBytes := c.readHello()
			require.Equal(t, statusOK, sh.status)
			proof := make([]byte, macSize)
			_, err := io.ReadFull(cs, proof)
			require.NoError(t, err)
			// The proof the server sent is the HMAC of both hellos under the
			// server's token.
			assert.Equal(t, mac([]byte(testToken), "ringo server proof", c.sent, shBytes), proof)

			// Answer with a proof made with the wrong token.
			_, err = cs.Write(mac([]byte(otherToken), "ringo client proof", c.sent, shBytes))
			require.NoError(t, err)
			st, reason := c.readStatusAndReason()
			assert.Equal(t, statusBadToken, st)
			assert.Equal(t, "wrong job token", reason)

			s := <-srv
			require.ErrorIs(t, s.err, ErrAuth)
			assert.Contains(t, s.err.Error(), "did not prove it holds the job token")
			assert.Contains(t, s.err.Error(), "rank 1")
			assert.False(t, accepted)
		})
	}
}

func TestHandshakeServerRefusesReplayedServerProof(t *testing.T) {
	// A client that echoes the server's own proof back must not pass: the
	// two directions use different labels.
	cs, ss := pipePair(t)
	srv := serveAsync(ss, peerID(testToken, 0, 2), nil)
	c := newRawClient(t, cs, peerID(testToken, 1, 2), nil)
	c.sendHello()
	c.readHello()
	proof := make([]byte, macSize)
	_, err := io.ReadFull(cs, proof)
	require.NoError(t, err)
	_, err = cs.Write(proof)
	require.NoError(t, err)
	st, _ := c.readStatusAndReason()
	assert.Equal(t, statusBadToken, st)
	require.ErrorIs(t, (<-srv).err, ErrAuth)
}

func TestHandshakeIncompatible(t *testing.T) {
	for _, sk := range streamKinds {
		t.Run(sk.name, func(t *testing.T) {
			for _, tc := range []struct {
				name       string
				cid, sid   Identity
				clientText string
			}{
				{"job", Identity{Token: []byte(testToken), Job: "job-A", Rank: 1, Size: 2, Purpose: PurposePeer},
					Identity{Token: []byte(testToken), Job: "job-B", Rank: 0, Size: 2, Purpose: PurposePeer}, "different job id"},
				{"purpose", Identity{Token: []byte(testToken), Job: testJob, Rank: 1, Size: 2, Purpose: PurposeRendezvous},
					peerID(testToken, 0, 2), "connection for rendezvous, this side expects peer"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					cs, ss := sk.pair(t)
					accepted := false
					c, s, rec := runHandshake(t, cs, ss, tc.cid, tc.sid, func(Hello) error { accepted = true; return nil })
					require.ErrorIs(t, c.err, ErrProtocol)
					assert.Contains(t, c.err.Error(), tc.clientText, "the client is told why")
					require.ErrorIs(t, s.err, ErrProtocol)
					assert.Contains(t, s.err.Error(), tc.clientText)
					assert.False(t, errors.Is(c.err, ErrAuth) || errors.Is(s.err, ErrAuth))
					assert.False(t, accepted)
					assertNoToken(t, rec.bytes(), testToken)
				})
			}
		})
	}
}

// Two jobs given the same address meet at the handshake: both sides learn
// that the other belongs to another job, as ErrOtherJob (a protocol error,
// not a failed token check).
func TestHandshakeOtherJob(t *testing.T) {
	cid := Identity{Token: []byte(otherToken), Job: "job-B", Rank: 1, Size: 2, Purpose: PurposeRendezvous}
	sid := Identity{Token: []byte(testToken), Job: "job-A", Rank: -1, Size: 2, Purpose: PurposeRendezvous}
	for _, sk := range streamKinds {
		t.Run(sk.name, func(t *testing.T) {
			cs, ss := sk.pair(t)
			c, s, _ := runHandshake(t, cs, ss, cid, sid, nil)
			for side, err := range map[string]error{"client": c.err, "server": s.err} {
				require.ErrorIs(t, err, ErrOtherJob, side)
				require.ErrorIs(t, err, ErrProtocol, side)
				assert.NotErrorIs(t, err, ErrAuth, side)
			}
			assert.Equal(t, 1, s.hello.Rank, "the server learns which rank the stranger claims")
		})
	}
}

// A rendezvous server has no rank: errors about it say what it is.
func TestHandshakeNamesTheRendezvousServer(t *testing.T) {
	rv := func(token string, rank int) Identity {
		return Identity{Token: []byte(token), Job: testJob, Rank: rank, Size: 4, Purpose: PurposeRendezvous}
	}
	for _, tc := range []struct {
		name        string
		client, srv Identity
		want        string
	}{
		{"the client holds another token", rv(otherToken, 2), rv(testToken, -1), "the rendezvous server could not prove"},
		{"another job", Identity{Token: []byte(testToken), Job: "job-B", Rank: 2, Size: 4, Purpose: PurposeRendezvous}, rv(testToken, -1),
			"the rendezvous server refused the connection: different job id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, ss := streamKinds[0].pair(t)
			c, _, _ := runHandshake(t, cs, ss, tc.client, tc.srv, nil)
			require.Error(t, c.err)
			assert.Contains(t, c.err.Error(), tc.want)
			assert.NotContains(t, c.err.Error(), "rank -1")
		})
	}
}

func TestHandshakeServerRefusesIncompatibleHello(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*hello)
		status byte
	}{
		{"version", func(h *hello) { h.version = ProtocolVersion + 1 }, statusVersion},
		{"byte order", func(h *hello) { h.little ^= 1 }, statusByteOrder},
		{"job", func(h *hello) { h.job[0] ^= 1 }, statusJob},
		{"purpose", func(h *hello) { h.purpose = 77 }, statusPurpose},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, ss := pipePair(t)
			srv := serveAsync(ss, peerID(testToken, 0, 2), nil)
			c := newRawClient(t, cs, peerID(testToken, 1, 2), tc.mutate)
			c.sendHello()
			sh, _ := c.readHello()
			assert.Equal(t, tc.status, sh.status)
			reason := readReason(cs)
			assert.NotEmpty(t, reason)
			s := <-srv
			require.ErrorIs(t, s.err, ErrProtocol)
			assert.Contains(t, s.err.Error(), reason)
		})
	}
}

func TestHandshakeAcceptRefuses(t *testing.T) {
	for _, sk := range streamKinds {
		t.Run(sk.name, func(t *testing.T) {
			cs, ss := sk.pair(t)
			refusal := errors.New("rank 3 has already joined")
			c, s, _ := runHandshake(t, cs, ss, peerID(testToken, 3, 4), peerID(testToken, 0, 4), func(h Hello) error {
				if h.Rank == 3 {
					return refusal
				}
				return nil
			})
			require.ErrorIs(t, s.err, refusal)
			assert.Equal(t, 3, s.hello.Rank)
			require.Error(t, c.err)
			assert.Contains(t, c.err.Error(), "refused")
			assert.Contains(t, c.err.Error(), refusal.Error(), "the client is told the reason")
		})
	}
}

const httpRequest = "GET / HTTP/1.1\r\nHost: 127.0.0.1:29500\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n"

func TestHandshakeServerRejectsGarbage(t *testing.T) {
	require.GreaterOrEqual(t, len(httpRequest), helloSize)
	for _, sk := range streamKinds {
		t.Run(sk.name, func(t *testing.T) {
			cs, ss := sk.pair(t)
			wrote := make(chan struct{})
			go func() {
				defer close(wrote)
				_, _ = cs.Write([]byte(httpRequest))
			}()
			accepted := false
			_, err := ServerHandshake(ss, peerID(testToken, 0, 2), testDeadline(), func(Hello) error { accepted = true; return nil })
			require.ErrorIs(t, err, ErrProtocol)
			assert.Contains(t, err.Error(), "not a ringo handshake")
			assert.Contains(t, err.Error(), "GET /", "the error shows the first bytes")
			assert.False(t, accepted)
			_ = ss.Close() // the caller closes; unblocks a writer still sending
			waitDone(t, wrote, "garbage writer")
		})
	}
}

// A short non-ringo greeting should be refused as soon as its first bytes are
// known not to be a ringo handshake.
func TestHandshakeServerRejectsShortGarbage(t *testing.T) {
	cs, ss := pipePair(t)
	go func() {
		_, _ = cs.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		_ = cs.Close()
	}()
	_, err := ServerHandshake(ss, peerID(testToken, 0, 2), testDeadline(), nil)
	require.ErrorIs(t, err, ErrProtocol)
}

func TestHandshakeClientRejectsGarbage(t *testing.T) {
	cs, ss := pipePair(t)
	go func() {
		b := make([]byte, helloSize)
		if _, err := io.ReadFull(ss, b); err != nil {
			return
		}
		_, _ = ss.Write([]byte("SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n" + httpRequest))
	}()
	_, err := ClientHandshake(cs, peerID(testToken, 1, 2), testDeadline())
	require.ErrorIs(t, err, ErrProtocol)
	_ = cs.Close()
}

func TestHandshakeSilentPeerTimesOut(t *testing.T) {
	const wait = 100 * time.Millisecond
	for _, sk := range streamKinds {
		t.Run(sk.name+"/server", func(t *testing.T) {
			_, ss := sk.pair(t) // the client end says nothing
			start := time.Now()
			_, err := ServerHandshake(ss, peerID(testToken, 0, 2), start.Add(wait), nil)
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			assert.GreaterOrEqual(t, time.Since(start), wait-10*time.Millisecond)
			assert.Less(t, time.Since(start), testTimeout)
		})
		t.Run(sk.name+"/client", func(t *testing.T) {
			cs, ss := sk.pair(t)
			// The server reads the hello and then says nothing.
			go func() { _, _ = io.Copy(io.Discard, ss) }()
			start := time.Now()
			_, err := ClientHandshake(cs, peerID(testToken, 1, 2), start.Add(wait))
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			assert.Less(t, time.Since(start), testTimeout)
			_ = cs.Close()
			_ = ss.Close()
		})
	}
}

func TestPurposeString(t *testing.T) {
	assert.Equal(t, "rendezvous", PurposeRendezvous.String())
	assert.Equal(t, "peer", PurposePeer.String())
	assert.Equal(t, "purpose(9)", Purpose(9).String())
}

// scriptedStream replays a fixed input as the peer's bytes and records what
// is written back. Deadlines are ignored: the input simply runs out.
type scriptedStream struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (s *scriptedStream) Read(p []byte) (int, error)       { return s.in.Read(p) }
func (s *scriptedStream) Write(p []byte) (int, error)      { return s.out.Write(p) }
func (s *scriptedStream) Close() error                     { return nil }
func (s *scriptedStream) SetDeadline(time.Time) error      { return nil }
func (s *scriptedStream) SetWriteDeadline(time.Time) error { return nil }
func (s *scriptedStream) SetReadDeadline(time.Time) error  { return nil }

const fuzzToken = "fuzz-t0ken-never-sent-3b1d"

func fuzzServerID() Identity {
	return Identity{Token: []byte(fuzzToken), Job: "fuzz-job", Rank: 0, Size: 4, Purpose: PurposePeer}
}

// fuzzClientHello is a well-formed hello that ServerHandshake accepts as
// compatible with fuzzServerID.
func fuzzClientHello() []byte {
	h := hello{
		version: ProtocolVersion, purpose: PurposePeer, status: statusOK, little: hostLittleEndian(),
		rank: 1, size: 4,
	}
	id := fuzzServerID()
	h.job = sha256.Sum256([]byte(id.Job))
	for i := range h.nonce {
		h.nonce[i] = byte(i)
	}
	return h.encode()
}

// FuzzServerHandshake feeds arbitrary bytes as the client's side of a
// handshake: the server returns an error, never panics, never calls accept and
// never succeeds, since no input can carry a proof of its fresh random nonce.
func FuzzServerHandshake(f *testing.F) {
	hello := fuzzClientHello()
	f.Add(hello)
	f.Add(append(bytes.Clone(hello), make([]byte, macSize)...))
	f.Add([]byte(httpRequest))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		s := &scriptedStream{in: bytes.NewReader(in)}
		accepted := false
		_, err := ServerHandshake(s, fuzzServerID(), time.Time{}, func(Hello) error {
			accepted = true
			return nil
		})
		require.Error(t, err, "the handshake succeeded without the token")
		require.False(t, accepted, "accept ran for an unauthenticated client")
		ok := errors.Is(err, ErrProtocol) || errors.Is(err, ErrAuth) ||
			errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		require.True(t, ok, "unexpected error class: %v", err)
		out := s.out.Bytes()
		require.False(t, bytes.Contains(out, []byte(fuzzToken)), "the token crossed the wire")
		if errors.Is(err, ErrAuth) {
			// Refused after the proof: hello, server proof, verdict, reason.
			require.Len(t, out, helloSize+macSize+1+1+len("wrong job token"))
			require.Equal(t, statusBadToken, out[helloSize+macSize])
		}
	})
}

func withChannel(id Identity, ch uint64) Identity {
	id.Channel = ch
	return id
}
