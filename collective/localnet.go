package collective

import (
	"context"
	"errors"
	"net"
	"sync"
)

// LocalNetwork forms n ranks in this process over the network transport of
// cfg (tcp by default) on the loopback interface: real sockets, handshakes
// and rendezvous, for benchmarks and tests that want them without starting
// processes. cfg.Rank, Size and Addr are set here. On error, the ranks
// formed are closed.
func LocalNetwork(ctx context.Context, n int, cfg Config) ([]*Comm, error) {
	if n < 1 {
		return nil, invalidf("LocalNetwork needs at least one rank, got %d", n)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	cfg.Addr, cfg.Size, cfg.ExternalRendezvous = ln.Addr().String(), n, false
	if err := ln.Close(); err != nil { // rank 0 serves here: free the port for it
		return nil, err
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
