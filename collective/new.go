package collective

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/collective/rendezvous"
	"github.com/ringo-ml/ringo/transport"
)

// New forms one rank of a communicator over the network: rank 0 serves the
// rendezvous at cfg.Addr (unless cfg.ExternalRendezvous: then a launcher
// does), every rank registers there the address it listens on for peers,
// and then every pair of ranks connects (the higher rank dials the lower)
// and authenticates with cfg.Token. New returns once this rank is
// connected to every other, or when ctx (bounded by cfg.Timeout) ends.
func New(ctx context.Context, cfg Config) (*Comm, error) {
	if cfg.Size < 1 || cfg.Rank < 0 || cfg.Rank >= cfg.Size {
		return nil, invalidf("rank %d of world size %d", cfg.Rank, cfg.Size)
	}
	if _, err := parseAlgorithm(cfg.Algorithm); err != nil {
		return nil, err
	}
	switch cfg.Transport {
	case "", "tcp", "quic":
	case "mem":
		return nil, invalidf(`transport "mem" connects ranks of one process: use Local`)
	default:
		return nil, invalidf("unknown transport %q (want tcp or quic)", cfg.Transport)
	}
	if cfg.Size == 1 {
		return newComm(0, 1, make([]transport.Stream, 1), cfg), nil
	}
	if cfg.Addr == "" {
		return nil, invalidf("a communicator of %d ranks needs a rendezvous address (Config.Addr, RINGO_ADDR or MASTER_ADDR/MASTER_PORT)", cfg.Size)
	}
	if t := cfg.timeout(); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, t, fmt.Errorf("%w: forming the communicator took longer than %v", ErrTimeout, t))
		defer cancel()
	}
	id := transport.Identity{Token: []byte(cfg.Token), Job: cfg.JobID, Rank: cfg.Rank, Size: cfg.Size}
	log := cfg.logger().With("rank", cfg.Rank)

	var serveErr chan error
	if cfg.Rank == 0 && !cfg.ExternalRendezvous {
		_, port, err := net.SplitHostPort(cfg.Addr)
		if err != nil {
			return nil, invalidf("rendezvous address %q: %v", cfg.Addr, err)
		}
		ln, err := transport.ListenTCP(ctx, net.JoinHostPort("", port))
		if err != nil {
			return nil, fmt.Errorf("ringo: rank 0 cannot serve the rendezvous at %s: %w", cfg.Addr, err)
		}
		defer ln.Close()
		serveErr = make(chan error, 1)
		go func() { serveErr <- rendezvous.Serve(ctx, ln, id, log) }()
	}

	nw, err := newNetwork(cfg)
	if err != nil {
		return nil, fmt.Errorf("ringo: rank %d: %w", cfg.Rank, err)
	}
	var peers peerListener
	defer func() {
		if peers != nil {
			_ = peers.close()
		}
	}()
	table, err := rendezvous.JoinWith(ctx, cfg.Addr, id, func(local net.Addr) (rendezvous.Entry, error) {
		if peers == nil { // a retried join keeps the listener of the first attempt
			host, err := advertiseHost(cfg.Iface, local)
			if err != nil {
				return rendezvous.Entry{}, err
			}
			if peers, err = nw.listen(ctx, host); err != nil {
				return rendezvous.Entry{}, fmt.Errorf("listening for peers on %s: %w", host, err)
			}
		}
		return rendezvous.Entry{Addr: peers.addr(), Fingerprint: nw.fingerprint()}, nil
	})
	if serveErr != nil {
		if serr := <-serveErr; err == nil && serr != nil {
			err = serr
		}
	}
	if err == nil {
		err = nw.setPeers(cfg.Rank, table)
	}
	if err != nil {
		return nil, fmt.Errorf("ringo: rank %d: %w", cfg.Rank, err)
	}
	streams, err := connectMesh(ctx, id, nw, peers, log)
	if err != nil {
		return nil, fmt.Errorf("ringo: rank %d: %w", cfg.Rank, err)
	}
	return newComm(cfg.Rank, cfg.Size, streams, cfg), nil
}

// advertiseHost picks the address peers should dial: iface's address, or
// else the address this host used to reach the rendezvous.
func advertiseHost(iface string, local net.Addr) (string, error) {
	if iface == "" {
		host, _, err := net.SplitHostPort(local.String())
		return host, err
	}
	return transport.InterfaceAddr(iface)
}

// connectMesh connects this rank to every other over nw: it dials every
// lower rank and accepts every higher one on ln. Connections that fail the
// handshake (strangers, wrong token or certificate, a rank already
// connected) are refused and logged.
func connectMesh(ctx context.Context, id transport.Identity, nw *network, ln peerListener, log interface {
	Warn(string, ...any)
}) ([]transport.Stream, error) {
	id.Purpose = transport.PurposePeer
	streams := make([]transport.Stream, id.Size)
	var (
		mu       sync.Mutex
		errs     []error
		wg       sync.WaitGroup
		missing  = id.Size - 1
		complete = make(chan struct{})
	)
	add := func(rank int, s transport.Stream) error {
		mu.Lock()
		defer mu.Unlock()
		if streams[rank] != nil {
			return fmt.Errorf("rank %d is already connected", rank)
		}
		streams[rank] = s
		if missing--; missing == 0 {
			close(complete)
		}
		return nil
	}
	failed := make(chan struct{})
	var failOnce sync.Once
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		failOnce.Do(func() { close(failed) })
	}
	handshakeDeadline := func() time.Time {
		d := time.Now().Add(30 * time.Second)
		if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
			d = cd
		}
		return d
	}

	for peer := 0; peer < id.Rank; peer++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := nw.peers[peer].Addr
			conn, err := nw.dial(ctx, peer)
			if err != nil {
				fail(fmt.Errorf("dialing rank %d at %s: %w", peer, addr, err))
				return
			}
			h, err := transport.ClientHandshake(conn, id, handshakeDeadline())
			if err == nil && h.Rank != peer {
				err = fmt.Errorf("%w: %s answered as rank %d, expected rank %d", transport.ErrProtocol, addr, h.Rank, peer)
			}
			if err == nil {
				err = add(peer, conn)
			}
			if err != nil {
				_ = conn.Close()
				fail(fmt.Errorf("connecting to rank %d: %w", peer, err))
			}
		}()
	}

	if id.Rank < id.Size-1 {
		stopAccept := context.AfterFunc(ctx, func() { _ = ln.close() })
		defer stopAccept()
		wg.Add(1)
		go func() {
			defer wg.Done()
			var hs sync.WaitGroup
			defer hs.Wait()
			for {
				conn, err := ln.accept(ctx)
				if errors.Is(err, transport.ErrAuth) || errors.Is(err, transport.ErrProtocol) {
					log.Warn("ringo: refused a peer connection", "err", err)
					continue
				}
				if err != nil {
					select {
					case <-complete:
					default:
						if !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
							fail(fmt.Errorf("accepting peers: %w", err))
						}
					}
					return
				}
				hs.Add(1)
				go func() {
					defer hs.Done()
					from := remoteAddr(conn)
					hctx, cancel := context.WithDeadline(ctx, handshakeDeadline())
					defer cancel()
					conn, err := ln.secure(hctx, conn)
					if err != nil {
						log.Warn("ringo: refused a peer connection", "from", from, "err", err)
						return
					}
					h, err := transport.ServerHandshake(conn, id, handshakeDeadline(), func(h transport.Hello) error {
						if h.Size != id.Size || h.Rank <= id.Rank || h.Rank >= id.Size {
							return fmt.Errorf("rank %d of world size %d is not expected to dial rank %d of %d", h.Rank, h.Size, id.Rank, id.Size)
						}
						return nw.checkPeer(conn, h.Rank)
					})
					if err == nil {
						err = add(h.Rank, conn)
					}
					if err != nil {
						log.Warn("ringo: refused a peer connection", "from", from, "err", err)
						_ = conn.Close()
					}
				}()
			}
		}()
	}

	var result error
	select {
	case <-complete:
	case <-failed:
	case <-ctx.Done():
		result = fmt.Errorf("connecting to peers: %w", context.Cause(ctx))
	}
	_ = ln.close() // no stranger can connect once the mesh is formed
	wg.Wait()
	mu.Lock()
	if result == nil && len(errs) > 0 {
		result = errors.Join(errs...)
	}
	if result == nil && missing > 0 {
		result = fmt.Errorf("connecting to peers: %d ranks missing", missing)
	}
	mu.Unlock()
	if result != nil {
		for _, s := range streams {
			if s != nil {
				_ = s.Close()
			}
		}
		return nil, result
	}
	return streams, nil
}

// parseInt reads an integer environment value.
func parseInt(name, v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, invalidf("%s=%q is not an integer", name, v)
	}
	return n, nil
}
