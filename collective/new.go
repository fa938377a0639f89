package collective

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"

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
	cfg = normalized(cfg)
	if cfg.Size < 1 || cfg.Rank < 0 || cfg.Rank >= cfg.Size {
		return nil, invalidf("rank %d of world size %d", cfg.Rank, cfg.Size)
	}
	if _, err := parseAlgorithm(cfg.Algorithm); err != nil {
		return nil, err
	}
	if _, err := parseCompression("Config.Compression", cfg.Compression); err != nil {
		return nil, err
	}
	if err := checkTransport(cfg); err != nil {
		return nil, err
	}
	withShm, err := sharedMemory(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Size == 1 {
		return newComm(0, 1, make([]transport.Stream, 1), cfg, world{conn: soloConnector{}}), nil
	}
	if cfg.Addr == "" {
		return nil, invalidf("a communicator of %d ranks needs a rendezvous address (Config.Addr, RINGO_ADDR or MASTER_ADDR/MASTER_PORT)", cfg.Size)
	}
	if t := cfg.timeout(); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, t, fmt.Errorf("%w: forming the communicator took longer than %v", ErrTimeout, t))
		defer cancel()
	}
	log := cfg.logger().With("rank", cfg.Rank)
	cfg, err = secured(cfg, log)
	if err != nil {
		return nil, err
	}
	id := transport.Identity{Token: []byte(cfg.Token), Job: cfg.JobID, Rank: cfg.Rank, Size: cfg.Size}

	var served *rendezvous.Server
	if cfg.Rank == 0 && !cfg.ExternalRendezvous {
		served, err = serveRendezvous(ctx, cfg, id, log)
		if err != nil {
			return nil, err
		}
		defer served.Close()
	}

	nw, err := network(cfg)
	if err != nil {
		return nil, fmt.Errorf("ringo: rank %d: %w", cfg.Rank, err)
	}
	var ls listeners // they own nw once listening
	owned := false   // by the world
	defer func() {
		switch {
		case owned:
		case ls.remote != nil:
			ls.close()
		default:
			_ = nw.Close()
		}
	}()
	host := hostKey(cfg, log)
	table, err := rendezvous.JoinWith(ctx, cfg.Addr, id, func(local net.Addr) (rendezvous.Entry, error) {
		addr, err := advertiseHost(cfg.Iface, local)
		if err != nil {
			return rendezvous.Entry{}, err
		}
		e, err := ls.listen(ctx, nw, addr, withShm, id, log)
		e.Host = host
		return e, err
	})
	if served != nil {
		if serr := served.Wait(); err == nil && serr != nil {
			err = serr
		}
	}
	var tc transport.Connector
	var place *placement
	if err == nil {
		tc, place, err = ls.connector(cfg, table)
	}
	if err != nil {
		return nil, fmt.Errorf("ringo: rank %d: %w", cfg.Rank, err)
	}
	w := world{conn: newShared(tc, 1), place: place}
	owned = true
	streams, err := connectMesh(ctx, w, cfg.Rank, cfg.Size)
	if err != nil {
		w.conn.release()
		return nil, fmt.Errorf("ringo: rank %d: %w", cfg.Rank, err)
	}
	c := newComm(cfg.Rank, cfg.Size, streams, cfg, w)
	checkLauncher(cfg.launcherLocal, &c.topo, log)
	return c, nil
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

// connectMesh connects rank to every other rank of a communicator on
// channel, through conn (which takes world ranks: w.rank maps to them). The
// first failure stops the rest; on failure, every connection made is closed.
func connectMesh(ctx context.Context, w world, rank, size int) ([]transport.Stream, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	streams := make([]transport.Stream, size)
	var wg sync.WaitGroup
	for peer := range size {
		if peer == rank {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := w.conn.connect(ctx, w.channel, w.rank(peer))
			if err != nil {
				cancel(err)
				return
			}
			streams[peer] = s
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		for _, s := range streams {
			if s != nil {
				_ = s.Close()
			}
		}
		return nil, fmt.Errorf("connecting to peers: %w", err)
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
