package collective

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/ringo-ml/ringo/collective/rendezvous"
	"github.com/ringo-ml/ringo/transport"
)

// This file holds what New does before it connects anything: the token a
// job without one gets, the refusal to listen beyond loopback unprotected,
// the address rank 0 listens on, and how often the rendezvous reports. Each
// is a function of its own, called from one place in New.

// normalized returns cfg with its names in the one case New compares.
func normalized(cfg Config) Config {
	cfg.Transport = normalName(cfg.Transport)
	cfg.Algorithm = normalName(cfg.Algorithm)
	cfg.Compression = normalName(cfg.Compression)
	return cfg
}

// secured returns cfg with the token it forms with: its own, or one derived
// from its job id. Without either it refuses to listen beyond loopback
// (unless cfg.Insecure). Rank 0 warns when a derived token guards a job
// that listens beyond loopback.
func secured(cfg Config, log *slog.Logger) (Config, error) {
	exposed, err := exposedHost(cfg)
	if err != nil {
		return cfg, err
	}
	switch {
	case cfg.Token != "":
	case cfg.JobID != "":
		cfg.Token = derivedToken(cfg.JobID)
		switch {
		case cfg.Rank != 0:
		case exposed != "":
			log.Warn(fmt.Sprintf("ringo: no RINGO_TOKEN: the job token is derived from the job id %q, which is no secret: "+
				"anyone who can reach %s and knows the job id can join. Set RINGO_TOKEN to the same random secret on every rank", cfg.JobID, exposed))
		default: // on loopback only this machine's users can reach the job
			log.Debug(fmt.Sprintf("ringo: no RINGO_TOKEN: the job token is derived from the job id %q, which is no secret", cfg.JobID))
		}
	case exposed != "" && !cfg.Insecure:
		return cfg, invalidf("rank %d would listen on %s without a job token, where anyone who can reach it could join the job. "+
			"Set RINGO_TOKEN to the same secret on every rank (e.g. export RINGO_TOKEN=$(openssl rand -hex 16), and mpirun -x RINGO_TOKEN), "+
			"run under a launcher that gives a job id (ringrun, Slurm, OpenMPI, torchrun --rdzv-id; or set RINGO_JOB_ID), "+
			"or set RINGO_INSECURE=1 (Config.Insecure) on a trusted network", cfg.Rank, exposed)
	}
	return cfg, nil
}

// exposedHost is where beyond loopback this rank would listen ("" if only
// on loopback): the peer listener is on the address that reaches the
// rendezvous (or on cfg.Iface's), and rank 0 serves the rendezvous on
// cfg.Addr's host.
func exposedHost(cfg Config) (string, error) {
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return "", invalidf("rendezvous address %q: %v", cfg.Addr, err)
	}
	if !isLoopback(host) {
		if host == "" {
			return "every interface", nil
		}
		return host, nil
	}
	if cfg.Iface != "" {
		addr, err := transport.InterfaceAddr(cfg.Iface)
		if err != nil {
			return "", fmt.Errorf("ringo: rank %d: %w", cfg.Rank, err)
		}
		if !isLoopback(addr) {
			return addr, nil
		}
	}
	return "", nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// listenAddress is where rank 0 serves the rendezvous: the host given if it
// is an IP address or "localhost", else (a host name, or none) every
// interface, since a host may resolve its own name to an address the other
// hosts do not reach (Debian maps it to 127.0.1.1).
func listenAddress(cfg Config) (string, error) {
	host, port, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return "", invalidf("rendezvous address %q: %v", cfg.Addr, err)
	}
	if host == "localhost" || net.ParseIP(host) != nil {
		return net.JoinHostPort(host, port), nil
	}
	return net.JoinHostPort("", port), nil
}

// serveRendezvous serves the rendezvous of rank 0 (rendezvous.ListenAndServe:
// this package does not listen itself). A port in use is waited for, until
// ctx ends: when two jobs are given one address, the second forms once the
// first has (the ranks of each refuse the other's), rather than one of them
// failing.
func serveRendezvous(ctx context.Context, cfg Config, id transport.Identity, log *slog.Logger) (*rendezvous.Server, error) {
	addr, err := listenAddress(cfg)
	if err != nil {
		return nil, err
	}
	srv, err := rendezvous.ListenAndServe(ctx, addr, id, rendezvous.ServeOptions{
		Log:      log,
		Progress: progressEvery(cfg),
		PortInUse: func() {
			log.Warn(fmt.Sprintf("ringo: the rendezvous port of %s is in use (by another job?): waiting for it", cfg.Addr))
		},
	})
	if err != nil {
		return nil, fmt.Errorf("ringo: rank 0 cannot serve the rendezvous at %s: %w", cfg.Addr, err)
	}
	return srv, nil
}

// progressEvery is how often the rendezvous reports who is missing: every
// few seconds, and often enough that a short forming timeout still sees
// some reports before it expires.
func progressEvery(cfg Config) time.Duration {
	t := cfg.timeout()
	if t <= 0 {
		return rendezvous.DefaultProgress
	}
	return min(rendezvous.DefaultProgress, max(50*time.Millisecond, t/4))
}
