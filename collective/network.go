package collective

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/ringo-ml/ringo/collective/rendezvous"
	"github.com/ringo-ml/ringo/transport"
	"github.com/ringo-ml/ringo/transport/quic"
	"github.com/ringo-ml/ringo/transport/shm"
)

// network returns the transport.Network cfg asks for between hosts: plain
// TCP, TCP with TLS, or QUIC (always TLS). Each TLS network presents a
// fresh certificate, whose fingerprint the mesh publishes through the
// rendezvous.
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

// checkTransport refuses a transport New does not know.
func checkTransport(cfg Config) error {
	switch cfg.Transport {
	case "", "auto", "tcp", "quic", "shm":
		return nil
	case "mem":
		return invalidf(`transport "mem" connects ranks of one process: use Local`)
	}
	return invalidf("unknown transport %q (want auto, tcp, quic or shm)", cfg.Transport)
}

// sharedMemory reports whether cfg connects the ranks of this host
// through shared memory: with "auto" where the machine can, with "shm"
// always (an error where it cannot).
func sharedMemory(cfg Config) (bool, error) {
	switch cfg.Transport {
	case "tcp", "quic":
		return false, nil
	case "shm":
		if err := shm.Supported(); err != nil {
			return false, invalidf("transport shm: %v", err)
		}
		return true, nil
	}
	return shm.Supported() == nil, nil
}

// hostKey names this rank's host for the rendezvous: cfg.Host, or the
// kernel's view (shm.HostKey); "" where neither is known (the rank then
// counts as a host of its own).
func hostKey(cfg Config, log *slog.Logger) string {
	if cfg.Host != "" {
		return "named:" + cfg.Host
	}
	k, err := shm.HostKey()
	if err != nil {
		log.Debug("ringo: this rank's host is unknown: it counts as a host of its own", "err", err)
		return ""
	}
	return "kernel:" + k
}

// listeners are what a rank of New listens with: the mesh to the other
// hosts' ranks (over cfg's network) and, with shared memory, the control
// mesh of this host's ranks (shm.ControlNetwork).
type listeners struct {
	remote *transport.Mesh
	local  *transport.Mesh // nil without shared memory
}

func (l *listeners) close() {
	if l.remote != nil {
		_ = l.remote.Close()
	}
	if l.local != nil {
		_ = l.local.Close()
	}
}

// listen opens the listeners and returns the entry this rank publishes
// (host is where peers should dial it).
func (l *listeners) listen(ctx context.Context, nw transport.Network, host string, withShm bool, id transport.Identity, log *slog.Logger) (rendezvous.Entry, error) {
	if l.remote == nil { // a retried join keeps the listeners of the first attempt
		m, err := transport.ListenMesh(ctx, nw, host, id, log)
		if err != nil {
			return rendezvous.Entry{}, fmt.Errorf("listening for peers on %s: %w", host, err)
		}
		l.remote = m
	}
	if withShm && l.local == nil {
		m, err := transport.ListenMesh(ctx, shm.ControlNetwork(), "", id, log)
		if err != nil {
			return rendezvous.Entry{}, fmt.Errorf("listening for the ranks of this host: %w", err)
		}
		l.local = m
	}
	ep := l.remote.Endpoint()
	e := rendezvous.Entry{Addr: ep.Addr, Fingerprint: ep.Fingerprint}
	if l.local != nil {
		e.Local = l.local.Endpoint().Addr
	}
	return e, nil
}

// connector starts the listeners with every rank's entry and returns the
// Connector of the world: shared memory to the ranks of this host that
// offer it, cfg's network to the others. It closes a listener no peer
// will use. The placement it returns is the same on every rank: it
// depends on the table only.
func (l *listeners) connector(cfg Config, table []rendezvous.Entry) (transport.Connector, *placement, error) {
	rank := cfg.Rank
	keys := make([]string, len(table))
	remote := make([]transport.Endpoint, len(table))
	local := make([]transport.Endpoint, len(table))
	everyOffers := true // every rank offered shared memory
	for r, e := range table {
		keys[r] = e.Host
		if keys[r] == "" {
			keys[r] = fmt.Sprintf("unknown host of rank %d", r)
		}
		remote[r] = transport.Endpoint{Addr: e.Addr, Fingerprint: e.Fingerprint}
		local[r] = transport.Endpoint{Addr: e.Local}
		everyOffers = everyOffers && e.Local != ""
	}
	place := &placement{host: hostsOf(keys), remote: l.remote.Cost()}
	place.local = place.remote
	if everyOffers {
		place.local = shm.LinkCost()
	}
	byPeer := make([]transport.Connector, len(table))
	var viaShm transport.Connector
	viaNet := false
	for p := range table {
		switch {
		case p == rank:
		case place.host[p] == place.host[rank] && table[p].Local != "" && l.local != nil:
			if viaShm == nil {
				if err := l.local.Start(local); err != nil {
					return nil, nil, err
				}
				viaShm = shm.Over(rank, l.local, shm.Options{})
			}
			byPeer[p] = viaShm
		case cfg.Transport == "shm" && place.host[p] != place.host[rank]:
			return nil, nil, invalidf("transport shm connects the ranks of one host, but rank %d is on another host than rank %d "+
				"(ranks share a host when they have the same boot id, IPC and network namespace, or the same RINGO_HOST)", p, rank)
		case cfg.Transport == "shm":
			return nil, nil, invalidf("transport shm: rank %d, on this host, offers no shared memory: is RINGO_TRANSPORT the same on every rank?", p)
		default:
			byPeer[p] = l.remote
			viaNet = true
		}
	}
	if viaNet {
		if err := l.remote.Start(remote); err != nil {
			return nil, nil, err
		}
	} else {
		_ = l.remote.Close()
	}
	if viaShm == nil && l.local != nil {
		_ = l.local.Close()
	}
	return transport.PerPeer(byPeer), place, nil
}
