package collective

import (
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
	streams := make([][]transport.Stream, n)
	for i := range streams {
		streams[i] = make([]transport.Stream, n)
	}
	for i := range n {
		for j := i + 1; j < n; j++ {
			streams[i][j], streams[j][i] = transport.Pipe()
		}
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = -1 // an in-process peer cannot vanish silently
	}
	hub := newPipeHub(n)
	comms := make([]*Comm, n)
	for i := range n {
		comms[i] = newComm(i, n, streams[i], cfg, world{conn: pipeEnd{hub, i}})
	}
	return comms, nil
}
