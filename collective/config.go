package collective

import (
	"log/slog"
	"time"
)

// Config describes one rank of a job.
type Config struct {
	Rank int // this rank, 0 <= Rank < Size
	Size int // number of ranks

	// Addr is the rendezvous address, host:port. Rank 0 serves it, unless
	// ExternalRendezvous; the ranks dial it, retrying until the context
	// given to New expires, so ranks (and an external server) may start in
	// any order. Rank 0 listens on the address given: an IP address as it
	// is (127.0.0.1:29504 is loopback only), "localhost" on loopback, an
	// empty host (":29504") or a host name on every interface (a host may
	// resolve its own name to a loopback address that the other hosts
	// cannot reach). If the port is taken, rank 0 waits for it: two jobs
	// given one address then form one after the other, never as one.
	Addr string
	// ExternalRendezvous says that the rendezvous at Addr is served by
	// someone else, e.g. a launcher (ringrun): no rank serves it, and every
	// rank, rank 0 included, only joins.
	ExternalRendezvous bool
	// Token is the job's shared secret. Every connection proves it holds the
	// token (HMAC challenge-response); the token itself never crosses the
	// wire. An empty Token is derived from JobID: every rank derives the
	// same, but so can anyone who knows the job id, so it is no secret (New
	// logs a warning when the job listens beyond loopback). With neither
	// Token nor JobID, New refuses to listen beyond the loopback interface
	// unless Insecure.
	Token string
	// JobID names the job; connections from other jobs are refused ("a rank
	// of another job tried to join"), so two jobs given the same address
	// never join each other. ConfigFromEnv takes it from the launcher.
	JobID string
	// Insecure lets a job without Token and JobID listen beyond the
	// loopback interface, where anyone who can reach its ports can join
	// (RINGO_INSECURE=1): only for a trusted network.
	Insecure bool
	// Transport says how ranks connect (RINGO_TRANSPORT):
	//
	//   - "auto" or "" (the default): shared memory between the ranks of
	//     one host (see Host), TCP (with TLS if TLS is set) between hosts;
	//   - "tcp": TCP between every pair, on one host too;
	//   - "quic": QUIC between every pair; it always encrypts and
	//     authenticates with TLS 1.3 (see TLS for the certificates);
	//   - "shm": shared memory between every pair: New fails if the ranks
	//     are not all on one host.
	//
	// Shared memory needs Linux and a writable /dev/shm; where it is not
	// available "auto" uses TCP throughout.
	Transport string
	// TLS wraps TCP links in TLS 1.3. Each rank makes an ephemeral
	// self-signed certificate and publishes its fingerprint through the
	// token-authenticated rendezvous; peers accept exactly the certificate
	// the rank they connect to registered. QUIC does this whatever TLS says.
	TLS bool
	// Iface names the network interface whose address ranks advertise to
	// each other. By default a rank advertises the address it reaches the
	// rendezvous from.
	Iface string
	// Host names the host this rank runs on (RINGO_HOST): ranks with the
	// same Host are one host's, share memory (Transport "auto" and "shm")
	// and count as local to each other (Comm.LocalRank, the hierarchical
	// algorithms). Empty means the host the kernel says: ranks with the
	// same boot id, IPC namespace and network namespace, so that two
	// containers, or two network namespaces of one machine, are two hosts.
	// Setting it can make one machine's ranks look like several hosts (to
	// test a multi-host job on one machine); ranks given one Host that
	// cannot share memory fail to connect.
	Host string

	// launcherLocal is the local rank the launcher gave (RINGO_LOCAL_RANK,
	// LOCAL_RANK, ...), checked against the ranks found on this host.
	launcherLocal localRankHint

	// Timeout bounds every call and the forming of the communicator; zero
	// means DefaultTimeout, negative means no bound (a lost peer is still
	// detected when its connection breaks).
	Timeout time.Duration
	// Heartbeat is how long a peer may stay silent (no data, no heartbeat)
	// before it counts as lost: this finds a cut link or a frozen host that
	// never closes its connections. Zero means DefaultHeartbeat for network
	// transports and none for Local; negative disables it.
	Heartbeat time.Duration
	// SlowWarning is how long a call may wait on a peer before it logs which
	// rank it is waiting for; zero means DefaultSlowWarning, negative never.
	SlowWarning time.Duration
	// Logger receives warnings (refused strangers, aborts); nil means slog.Default().
	Logger *slog.Logger

	// Algorithm forces the algorithm (RINGO_ALGO): for AllReduce "ring",
	// "bidir" (two counter-rotating rings, each with half the data: a gain
	// where each link has its own bandwidth in each direction, not behind a
	// switch port), "doubling" (recursive doubling) or "rabenseifner"
	// (recursive halving then doubling); for Broadcast "doubling" forces the
	// binomial tree and "ring" or "bidir" the chain. "" or "auto" lets the
	// cost model (costmodel.go) choose by size and world size.
	Algorithm string

	// Compression encodes the ring AllReduce's traffic (RINGO_COMPRESSION):
	//
	//   - "" or "none": the values as they are;
	//   - "s2" or "zstd": lossless, with github.com/klauspost/compress (S2
	//     for speed, zstd for ratio). Each segment goes compressed only if
	//     that saves at least 1/8 of its bytes; after a segment that does
	//     not, the sender stops trying for 1, 2, 4 ... up to 32 segments,
	//     so incompressible data costs little. Results are bitwise the
	//     uncompressed ones, for every element type and op;
	//   - "bf16" or "fp16": lossy, for float32 Sum and Avg: values cross
	//     the wire as bfloat16 or IEEE float16 (round to nearest even) and
	//     are accumulated in float32, as PyTorch DDP's bf16/fp16
	//     compression hooks do. Each value is rounded about Size times: on
	//     normal gradients the result's relative (L2) error was 2.0e-3 on 2
	//     ranks to 3.5e-3 on 8 for bf16, 2.5e-4 to 4.4e-4 for fp16
	//     (docs/compression.md). fp16 turns sums beyond 65504 into Inf:
	//     prefer bf16 unless gradients are known to be small. An AllReduce
	//     of another type or op (an int64 counter, a Max) goes uncompressed
	//     rather than failing, as DDP's hooks leave everything but gradient
	//     buckets alone.
	//
	// Only bandwidth-bound calls compress: those that go by the ring, or by
	// Rabenseifner's algorithm when the cost model chose it (they then go
	// by the compressed ring, which moves as many bytes). Latency-bound
	// calls (recursive doubling), a forced Algorithm other than ring or
	// bidir, and the other collectives send values as they are. Every rank
	// must use the same compression: the codec is part of the call's
	// signature, so ranks that differ fail with ErrMismatch. With a single
	// rank nothing is encoded.
	Compression string

	// SegmentBytes, MinSegmentBytes and PipelineDepth tune the ring pipeline;
	// zero means the defaults of package ring.
	SegmentBytes    int
	MinSegmentBytes int
	PipelineDepth   int
}

func (c Config) timeout() time.Duration {
	switch {
	case c.Timeout == 0:
		return DefaultTimeout
	case c.Timeout < 0:
		return 0
	}
	return c.Timeout
}

func (c Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// DefaultHeartbeat and DefaultSlowWarning are the defaults of Config.Heartbeat
// (network transports) and Config.SlowWarning.
const (
	DefaultHeartbeat   = 5 * time.Second
	DefaultSlowWarning = 10 * time.Second
)

func (c Config) heartbeat(network bool) time.Duration {
	switch {
	case c.Heartbeat < 0, c.Heartbeat == 0 && !network:
		return 0
	case c.Heartbeat == 0:
		return DefaultHeartbeat
	}
	return c.Heartbeat
}

func (c Config) slowWarning() time.Duration {
	switch {
	case c.SlowWarning < 0:
		return 0
	case c.SlowWarning == 0:
		return DefaultSlowWarning
	}
	return c.SlowWarning
}
