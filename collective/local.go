package collective

import (
	"context"
	"fmt"

	"github.com/ringo-ml/ringo/transport"
)

// Local returns n ranks of one communicator in this process, connected by the
// mem transport (in-process pipes with the same framing as TCP). It is meant
// for tests, including users' own: run each rank in its own goroutine.
func Local(n int) ([]*Comm, error) {
	return LocalConfig(n, Config{})
}

// LocalConfig is Local with tuning from cfg (Rank, Size, Addr and Transport
// are ignored).
func LocalConfig(n int, cfg Config) ([]*Comm, error) {
	if n < 1 {
		return nil, invalidf("Local needs at least one rank, got %d", n)
	}
	if _, err := parseAlgorithm(cfg.Algorithm); err != nil {
		return nil, err
	}
	if _, err := parseCompression("Config.Compression", cfg.Compression); err != nil {
		return nil, err
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = -1 // an in-process peer cannot vanish silently
	}
	// A hub of pipes is to Local what a mesh is to New: it connects the
	// world here, and later its sub-communicators and point-to-point
	// channels. Its Connect never waits, so one goroutine connects all.
	hub := transport.NewPipeHub(n)
	worlds := make([]world, n)
	streams := make([][]transport.Stream, n)
	for r := range n {
		worlds[r] = world{conn: newShared(hub.Connector(r), 1)}
		streams[r] = make([]transport.Stream, n)
	}
	for r := range n {
		for p := range n {
			if p == r {
				continue
			}
			s, err := worlds[r].conn.connect(context.Background(), 0, p)
			if err != nil { // not while every rank holds the hub
				return nil, fmt.Errorf("ringo: Local: %w", err)
			}
			streams[r][p] = s
		}
	}
	comms := make([]*Comm, n)
	for r := range n {
		comms[r] = newComm(r, n, streams[r], cfg, worlds[r])
	}
	return comms, nil
}
