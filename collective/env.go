package collective

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Init forms this process's rank of a job described by its environment (see
// ConfigFromEnv) and connects it to every other rank.
func Init(ctx context.Context) (*Comm, error) {
	cfg, err := ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	return New(ctx, cfg)
}

// ConfigFromEnv reads a Config from the environment that ringrun, torchrun,
// OpenMPI's mpirun or Slurm's srun give a process:
//
//   - rank and world size: RINGO_RANK/RINGO_WORLD_SIZE, else torchrun's
//     RANK/WORLD_SIZE, else OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE, else
//     PMI_RANK/PMI_SIZE (MPICH), else SLURM_PROCID/SLURM_NTASKS;
//   - rendezvous: RINGO_ADDR (host:port), else MASTER_ADDR and MASTER_PORT
//     (under a torchrun whose agent already serves its store on MASTER_PORT,
//     TORCHELASTIC_USE_AGENT_STORE=True, ringo uses MASTER_PORT+1);
//     RINGO_RENDEZVOUS_EXTERNAL=1 (or true) when a launcher such as ringrun
//     serves it, so that rank 0 does not (Config.ExternalRendezvous);
//   - the job id (Config.JobID): RINGO_JOB_ID, else the id of the launcher
//     that gave the rank: torchrun's TORCHELASTIC_RUN_ID (--rdzv-id; its
//     default "none" is no id) and TORCHELASTIC_RESTART_COUNT, OpenMPI's
//     OMPI_MCA_ess_base_jobid or PMIX_NAMESPACE, Slurm's SLURM_JOB_ID and
//     SLURM_STEP_ID (also under MPICH's PMI_RANK);
//   - the token (Config.Token): RINGO_TOKEN, else OpenMPI 4's per-job key
//     OMPI_MCA_orte_precondition_transports; without either, New derives
//     one from the job id (no secret: see Config.Token);
//   - the host (Config.Host): RINGO_HOST, else the one the kernel says; the
//     launcher's local rank (RINGO_LOCAL_RANK, LOCAL_RANK,
//     OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, SLURM_LOCALID, of the
//     launcher that gave the rank) is checked against the ranks New finds
//     on this host, and a disagreement logged;
//   - RINGO_INSECURE=1 (Config.Insecure), RINGO_TRANSPORT (auto, tcp, quic
//     or shm), RINGO_TLS=1 (TLS over TCP), RINGO_IFACE, RINGO_TIMEOUT (a Go
//     duration such as "90s", or seconds), RINGO_HEARTBEAT (the same),
//     RINGO_ALGO, RINGO_COMPRESSION (none, s2, zstd, bf16 or fp16: see
//     Config.Compression), RINGO_DEBUG (any value: debug logs on stderr).
//
// Names (transport, algorithm, compression) are case-insensitive.
func ConfigFromEnv() (Config, error) {
	return configFrom(os.Getenv)
}

// ErrNoRank is what Init and ConfigFromEnv return (with ErrInvalid) in a
// process that no launcher started: a program is one rank of a job, and
// its environment says which. A program may fall back to running every rank
// itself (Local, LocalNetwork) when errors.Is(err, ErrNoRank).
var ErrNoRank = errors.New("no rank in the environment")

// noRankHelp says how to start a job.
const noRankHelp = "this program is one rank of a job. " +
	"Start it with a launcher (ringrun -np 4 ./prog, or torchrun, mpirun, srun with RINGO_ADDR), " +
	"or set RINGO_RANK, RINGO_WORLD_SIZE and RINGO_ADDR yourself; in tests, use collective.Local"

func configFrom(getenv func(string) string) (Config, error) {
	var cfg Config
	var from *launcher
	for _, l := range launchers() {
		r, s := getenv(l.rank), getenv(l.size)
		if r == "" && s == "" {
			continue
		}
		if r == "" || s == "" {
			return cfg, invalidf("%s and %s must be set together", l.rank, l.size)
		}
		var err error
		if cfg.Rank, err = parseInt(l.rank, r); err != nil {
			return cfg, err
		}
		if cfg.Size, err = parseInt(l.size, s); err != nil {
			return cfg, err
		}
		from = &l
		break
	}
	if from == nil {
		return cfg, fmt.Errorf("%w: %w: %s", ErrInvalid, ErrNoRank, noRankHelp)
	}
	if cfg.Size < 1 || cfg.Rank < 0 || cfg.Rank >= cfg.Size {
		return cfg, invalidf("rank %d is outside world size %d", cfg.Rank, cfg.Size)
	}

	cfg.Addr = getenv("RINGO_ADDR")
	if cfg.Addr == "" {
		host, port := getenv("MASTER_ADDR"), getenv("MASTER_PORT")
		if host != "" && port != "" {
			p, err := parseInt("MASTER_PORT", port)
			if err != nil {
				return cfg, err
			}
			if strings.EqualFold(getenv("TORCHELASTIC_USE_AGENT_STORE"), "true") {
				p++ // the agent's TCPStore owns MASTER_PORT
			}
			cfg.Addr = net.JoinHostPort(host, strconv.Itoa(p))
		}
	}
	if cfg.Addr == "" && cfg.Size > 1 {
		return cfg, invalidf("no rendezvous address in the environment: set RINGO_ADDR=host:port (or MASTER_ADDR and MASTER_PORT)")
	}
	if v := getenv("RINGO_RENDEZVOUS_EXTERNAL"); v != "" {
		ext, err := strconv.ParseBool(v)
		if err != nil {
			return cfg, invalidf("RINGO_RENDEZVOUS_EXTERNAL=%q: want 1 or true (0 or false)", v)
		}
		cfg.ExternalRendezvous = ext
	}
	cfg.JobID = getenv("RINGO_JOB_ID")
	if cfg.JobID == "" {
		cfg.JobID = from.jobID(getenv)
	}
	cfg.Token = getenv("RINGO_TOKEN")
	if cfg.Token == "" && from.token != nil {
		cfg.Token = from.token(getenv)
	}
	if v := getenv("RINGO_INSECURE"); v != "" {
		insecure, err := strconv.ParseBool(v)
		if err != nil {
			return cfg, invalidf("RINGO_INSECURE=%q: want 1 or true (0 or false)", v)
		}
		cfg.Insecure = insecure
	}
	cfg.Transport = normalName(getenv("RINGO_TRANSPORT"))
	if v := getenv("RINGO_TLS"); v != "" {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return cfg, invalidf("RINGO_TLS=%q: want 1 or true (0 or false)", v)
		}
		cfg.TLS = on
	}
	cfg.Iface = getenv("RINGO_IFACE")
	cfg.Host = getenv("RINGO_HOST")
	if v := getenv(from.localRank); v != "" {
		lr, err := parseInt(from.localRank, v)
		if err != nil {
			return cfg, err
		}
		cfg.launcherLocal = localRankHint{variable: from.localRank, rank: lr}
	}
	var err error
	if cfg.Timeout, err = envDuration(getenv, "RINGO_TIMEOUT"); err != nil {
		return cfg, err
	}
	cfg.Algorithm = normalName(getenv("RINGO_ALGO"))
	if _, err := parseAlgorithm(cfg.Algorithm); err != nil {
		return cfg, fmt.Errorf("RINGO_ALGO: %w", err)
	}
	cfg.Compression = normalName(getenv("RINGO_COMPRESSION"))
	if _, err := parseCompression("RINGO_COMPRESSION", cfg.Compression); err != nil {
		return cfg, err
	}
	if cfg.Heartbeat, err = envDuration(getenv, "RINGO_HEARTBEAT"); err != nil {
		return cfg, err
	}
	if getenv("RINGO_DEBUG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg, nil
}

// envDuration reads a duration variable: a Go duration ("90s") or seconds
// ("2.5"); unset is zero.
func envDuration(getenv func(string) string, name string) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return 0, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		return d, nil
	}
	secs, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, invalidf("%s=%q is neither a duration nor seconds", name, v)
	}
	return time.Duration(secs * float64(time.Second)), nil
}
