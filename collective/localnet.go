package collective

import (
	"context"
	"errors"
	"sync"

	"github.com/ringo-ml/ringo/collective/rendezvous"
	"github.com/ringo-ml/ringo/transport"
)

// LocalNetwork forms n ranks in this process as New forms them, over the
// transport of cfg on the loopback interface: real sockets (or shared
// memory: cfg.Transport "" or "auto" takes shared memory, since the ranks
// share a host; "tcp" forces sockets), handshakes and rendezvous, for
// benchmarks and tests that want them without starting processes.
// cfg.Rank, Size and Addr are set here. On error, the ranks formed are
// closed.
func LocalNetwork(ctx context.Context, n int, cfg Config) ([]*Comm, error) {
	if n < 1 {
		return nil, invalidf("LocalNetwork needs at least one rank, got %d", n)
	}
	cfg.Size = n
	if n > 1 {
		// The rendezvous is served here, beside the ranks, on a port of its
		// own choosing: no port is picked, freed and hoped to be free still.
		id := transport.Identity{Token: []byte(cfg.Token), Job: cfg.JobID, Size: n}
		srv, err := rendezvous.ListenAndServe(ctx, "127.0.0.1:0", id, rendezvous.ServeOptions{Log: cfg.logger()})
		if err != nil {
			return nil, err
		}
		defer srv.Close()
		cfg.Addr, cfg.ExternalRendezvous = srv.Addr(), true
	}
	comms := make([]*Comm, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cfg
			c.Rank = r
			comms[r], errs[r] = New(ctx, c)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, c := range comms {
			if c != nil {
				_ = c.Close()
			}
		}
		return nil, err
	}
	return comms, nil
}
