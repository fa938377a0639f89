package collective

import (
	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/quic"
)

// network returns the transport.Network cfg asks for: plain TCP, TCP with
// TLS, or QUIC (always TLS). Each TLS network presents a fresh certificate,
// whose fingerprint the mesh publishes through the rendezvous.
func network(cfg Config) (transport.Network, error) {
	isQUIC := cfg.Transport == "quic"
	if !isQUIC && !cfg.TLS {
		return transport.NewTCPNetwork(nil), nil
	}
	cert, err := transport.NewCertificate()
	if err != nil {
		return nil, err
	}
	if isQUIC {
		return quic.NewNetwork(cert), nil
	}
	return transport.NewTCPNetwork(cert), nil
}
