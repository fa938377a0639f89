package transport

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"time"
)

// ALPN is the application protocol ringo's TLS connections (TCP+TLS and
// QUIC) negotiate.
const ALPN = "ringo/1"

// Certificate is one rank's ephemeral TLS identity: a self-signed ed25519
// certificate made at startup, never written anywhere. Peers do not check it
// against a CA: they check its fingerprint (Fingerprint), which each rank
// publishes through the token-authenticated rendezvous.
type Certificate struct {
	cert tls.Certificate
	fp   string
}

// NewCertificate makes a fresh self-signed certificate and key.
func NewCertificate() (*Certificate, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("transport: certificate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("transport: certificate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "ringo rank"},
		NotBefore:    now.Add(-time.Hour), // tolerate clock skew between hosts
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, fmt.Errorf("transport: certificate: %w", err)
	}
	return &Certificate{
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		fp:   Fingerprint(der),
	}, nil
}

// Fingerprint returns the fingerprint of a DER certificate: the hex SHA-256
// of its bytes.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// Fingerprint returns the fingerprint peers must see to accept this certificate.
func (c *Certificate) Fingerprint() string { return c.fp }

// fingerprintError is the refusal of a certificate.
func fingerprintError(got, want string) error {
	if want == "" {
		return fmt.Errorf("%w: certificate %.16s… is not one of the job's", ErrAuth, got)
	}
	return fmt.Errorf("%w: the peer's certificate %.16s… is not the one it registered (%.16s…)", ErrAuth, got, want)
}

// ExpectFingerprint returns an allow function for ServerConfig that accepts
// only the certificate whose fingerprint is want.
func ExpectFingerprint(want string) func(string) error {
	return func(got string) error {
		if got != want {
			return fingerprintError(got, want)
		}
		return nil
	}
}

// FingerprintIn returns an allow function for ServerConfig that accepts any
// certificate whose fingerprint is in fps.
func FingerprintIn(fps []string) func(string) error {
	set := make(map[string]struct{}, len(fps))
	for _, fp := range fps {
		if fp != "" {
			set[fp] = struct{}{}
		}
	}
	return func(got string) error {
		if _, ok := set[got]; !ok {
			return fingerprintError(got, "")
		}
		return nil
	}
}

func peerFingerprint(cs tls.ConnectionState) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", fmt.Errorf("%w: the peer presented no certificate", ErrAuth)
	}
	return Fingerprint(cs.PeerCertificates[0].Raw), nil
}

func verifyWith(allow func(string) error) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		fp, err := peerFingerprint(cs)
		if err != nil {
			return err
		}
		if allow == nil {
			return nil
		}
		return allow(fp)
	}
}

// ClientConfig is the TLS 1.3 configuration of the dialing side: it presents
// c and accepts the server only if its certificate's fingerprint is peer.
//
// The chain is not verified (InsecureSkipVerify): a self-signed certificate
// has no chain. The fingerprint check in VerifyConnection is the proof of the
// peer's identity, and it is never skipped; the job-token handshake still runs
// on the stream afterwards.
func (c *Certificate) ClientConfig(peer string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{c.cert},
		NextProtos:         []string{ALPN},
		ServerName:         "ringo",
		InsecureSkipVerify: true, // see VerifyConnection
		VerifyConnection:   verifyWith(ExpectFingerprint(peer)),
	}
}

// ServerConfig is the TLS 1.3 configuration of the accepting side: it
// presents c and requires a client certificate. allow, if not nil, is given
// the client certificate's fingerprint during the handshake and refuses it
// with an error. With a nil allow the caller must check PeerFingerprint
// before trusting the connection (the QUIC listener does, in Accept).
func (c *Certificate) ServerConfig(allow func(fingerprint string) error) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{c.cert},
		NextProtos:       []string{ALPN},
		ClientAuth:       tls.RequireAnyClientCert, // self-signed: checked by fingerprint
		VerifyConnection: verifyWith(allow),
	}
}

// ClientTLS runs the client side of a TLS 1.3 handshake on conn, accepting
// only the server whose certificate has fingerprint peer. It closes conn
// when the handshake fails.
func ClientTLS(ctx context.Context, conn net.Conn, c *Certificate, peer string) (*tls.Conn, error) {
	tc := tls.Client(conn, c.ClientConfig(peer))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("transport: TLS handshake with %s: %w", conn.RemoteAddr(), err)
	}
	return tc, nil
}

// ServerTLS runs the server side of a TLS 1.3 handshake on conn; allow
// checks the client certificate's fingerprint (see ServerConfig). It closes
// conn when the handshake fails.
func ServerTLS(ctx context.Context, conn net.Conn, c *Certificate, allow func(string) error) (*tls.Conn, error) {
	tc := tls.Server(conn, c.ServerConfig(allow))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("transport: TLS handshake with %s: %w", conn.RemoteAddr(), err)
	}
	return tc, nil
}

// PeerFingerprint returns the fingerprint of the certificate the other side
// of s presented, and false when s is not a TLS stream (a tls.Conn, or a
// QUIC stream: anything with a ConnectionState method).
func PeerFingerprint(s Stream) (string, bool) {
	st, ok := s.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		return "", false
	}
	fp, err := peerFingerprint(st.ConnectionState())
	return fp, err == nil
}
