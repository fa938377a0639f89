package collective

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective/rendezvous"
	"github.com/ringo-ml/ringo/transport"
)

func envOf(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestConfigFromEnvironment(t *testing.T) {
	cases := []struct {
		name string
		env  func(string) string
		want Config
	}{
		{"ringo", envOf("RINGO_RANK", "2", "RINGO_WORLD_SIZE", "4", "RINGO_ADDR", "h:1", "RINGO_TOKEN", "t", "RINGO_TIMEOUT", "90s", "RINGO_JOB_ID", "j", "RINGO_IFACE", "eth1", "RINGO_TRANSPORT", "tcp"),
			Config{Rank: 2, Size: 4, Addr: "h:1", Token: "t", Timeout: 90 * time.Second, JobID: "j", Iface: "eth1", Transport: "tcp"}},
		{"torchrun", envOf("RANK", "1", "WORLD_SIZE", "2", "MASTER_ADDR", "m", "MASTER_PORT", "29500", "TORCHELASTIC_RUN_ID", "run7"),
			Config{Rank: 1, Size: 2, Addr: "m:29500", JobID: "torchrun-run7"}},
		{"torchrun agent store", envOf("RANK", "0", "WORLD_SIZE", "2", "MASTER_ADDR", "m", "MASTER_PORT", "29500", "TORCHELASTIC_USE_AGENT_STORE", "True"),
			Config{Rank: 0, Size: 2, Addr: "m:29501"}},
		{"openmpi", envOf("OMPI_COMM_WORLD_RANK", "3", "OMPI_COMM_WORLD_SIZE", "8", "RINGO_ADDR", "h:2"),
			Config{Rank: 3, Size: 8, Addr: "h:2"}},
		{"slurm", envOf("SLURM_PROCID", "5", "SLURM_NTASKS", "6", "RINGO_ADDR", "h:3", "SLURM_JOB_ID", "99", "RINGO_TIMEOUT", "2.5"),
			Config{Rank: 5, Size: 6, Addr: "h:3", JobID: "slurm-99", Timeout: 2500 * time.Millisecond}},
		{"external rendezvous", envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "3", "RINGO_ADDR", "127.0.0.1:4", "RINGO_RENDEZVOUS_EXTERNAL", "1"),
			Config{Rank: 0, Size: 3, Addr: "127.0.0.1:4", ExternalRendezvous: true}},
		{"external rendezvous, true", envOf("OMPI_COMM_WORLD_RANK", "1", "OMPI_COMM_WORLD_SIZE", "3", "RINGO_ADDR", "h:4", "RINGO_RENDEZVOUS_EXTERNAL", "true"),
			Config{Rank: 1, Size: 3, Addr: "h:4", ExternalRendezvous: true}},
		{"rank 0 serves", envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "3", "RINGO_ADDR", "h:4", "RINGO_RENDEZVOUS_EXTERNAL", "0"),
			Config{Rank: 0, Size: 3, Addr: "h:4"}},
		{"quic", envOf("RINGO_RANK", "1", "RINGO_WORLD_SIZE", "2", "RINGO_ADDR", "h:5", "RINGO_TRANSPORT", "quic"),
			Config{Rank: 1, Size: 2, Addr: "h:5", Transport: "quic"}},
		{"tcp with TLS", envOf("RINGO_RANK", "1", "RINGO_WORLD_SIZE", "2", "RINGO_ADDR", "h:5", "RINGO_TLS", "1"),
			Config{Rank: 1, Size: 2, Addr: "h:5", TLS: true}},
		{"TLS off", envOf("RINGO_RANK", "1", "RINGO_WORLD_SIZE", "2", "RINGO_ADDR", "h:5", "RINGO_TLS", "false"),
			Config{Rank: 1, Size: 2, Addr: "h:5"}},
		{"heartbeat as a duration", envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_HEARTBEAT", "2s"),
			Config{Rank: 0, Size: 1, Heartbeat: 2 * time.Second}},
		{"heartbeat in seconds", envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_HEARTBEAT", "1.5"),
			Config{Rank: 0, Size: 1, Heartbeat: 1500 * time.Millisecond}},
		{"compression", envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_COMPRESSION", "bf16"),
			Config{Rank: 0, Size: 1, Compression: "bf16"}},
		{"ringo wins over torchrun", envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RANK", "3", "WORLD_SIZE", "4"),
			Config{Rank: 0, Size: 1}},
		{"names in any case", envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_TRANSPORT", "QUIC", "RINGO_ALGO", "Ring", "RINGO_COMPRESSION", "BF16"),
			Config{Rank: 0, Size: 1, Transport: "quic", Algorithm: "ring", Compression: "bf16"}},
		{"insecure", envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_INSECURE", "1"),
			Config{Rank: 0, Size: 1, Insecure: true}},
		{"shared memory, any case", envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_TRANSPORT", "SHM", "RINGO_ALGO", "Hier"),
			Config{Rank: 0, Size: 1, Transport: "shm", Algorithm: "hier"}},
		{"auto", envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_TRANSPORT", "Auto"),
			Config{Rank: 0, Size: 1, Transport: "auto"}},
		{"host", envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_HOST", "node7"),
			Config{Rank: 0, Size: 1, Host: "node7"}},
		{"ringrun's local rank", envOf("RINGO_RANK", "3", "RINGO_WORLD_SIZE", "4", "RINGO_ADDR", "h:1", "RINGO_LOCAL_RANK", "1", "LOCAL_RANK", "0"),
			Config{Rank: 3, Size: 4, Addr: "h:1", launcherLocal: localRankHint{"RINGO_LOCAL_RANK", 1}}},
		{"torchrun's local rank", envOf("RANK", "3", "WORLD_SIZE", "4", "MASTER_ADDR", "m", "MASTER_PORT", "1", "LOCAL_RANK", "1"),
			Config{Rank: 3, Size: 4, Addr: "m:1", launcherLocal: localRankHint{"LOCAL_RANK", 1}}},
		{"OpenMPI's local rank", envOf("OMPI_COMM_WORLD_RANK", "3", "OMPI_COMM_WORLD_SIZE", "4", "RINGO_ADDR", "h:1", "OMPI_COMM_WORLD_LOCAL_RANK", "2"),
			Config{Rank: 3, Size: 4, Addr: "h:1", launcherLocal: localRankHint{"OMPI_COMM_WORLD_LOCAL_RANK", 2}}},
		{"Slurm's local rank", envOf("SLURM_PROCID", "3", "SLURM_NTASKS", "4", "RINGO_ADDR", "h:1", "SLURM_LOCALID", "0", "LOCAL_RANK", "5"),
			Config{Rank: 3, Size: 4, Addr: "h:1", launcherLocal: localRankHint{"SLURM_LOCALID", 0}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := configFrom(tc.env)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestConfigFromEnvironmentErrors(t *testing.T) {
	for name, env := range map[string]func(string) string{
		"nothing":         envOf(),
		"half a pair":     envOf("RINGO_RANK", "0"),
		"not a number":    envOf("RINGO_RANK", "zero", "RINGO_WORLD_SIZE", "2", "RINGO_ADDR", "h:1"),
		"rank too big":    envOf("RINGO_RANK", "2", "RINGO_WORLD_SIZE", "2", "RINGO_ADDR", "h:1"),
		"no address":      envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "2"),
		"bad timeout":     envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_TIMEOUT", "soon"),
		"bad heartbeat":   envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_HEARTBEAT", "often"),
		"bad master port": envOf("RANK", "0", "WORLD_SIZE", "2", "MASTER_ADDR", "m", "MASTER_PORT", "x"),
		"bad external":    envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "2", "RINGO_ADDR", "h:1", "RINGO_RENDEZVOUS_EXTERNAL", "launcher"),
		"bad TLS":         envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "2", "RINGO_ADDR", "h:1", "RINGO_TLS", "yes please"),
		"bad compression": envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_COMPRESSION", "gzip"),
		"bad algorithm":   envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_ALGO", "fastest"),
		"bad insecure":    envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RINGO_INSECURE", "sure"),
		"bad local rank":  envOf("RANK", "0", "WORLD_SIZE", "1", "LOCAL_RANK", "first"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := configFrom(env)
			require.ErrorIs(t, err, ErrInvalid)
		})
	}
}

// Every launcher's job id (and OpenMPI 4's per-job key, a real secret)
// comes from the variables of the launcher that gave the rank: an mpirun
// inside a Slurm allocation is its own job, not the allocation's.
func TestJobIDAndTokenOfEachLauncher(t *testing.T) {
	for _, tc := range []struct {
		name        string
		env         func(string) string
		job, token  string
		rank, ranks int
	}{
		{"ringrun", envOf("RINGO_RANK", "1", "RINGO_WORLD_SIZE", "2", "RINGO_ADDR", "h:1", "RINGO_JOB_ID", "ringrun-ab12-0", "RINGO_TOKEN", "secret", "SLURM_JOB_ID", "7"),
			"ringrun-ab12-0", "secret", 1, 2},
		{"OpenMPI 4", envOf("OMPI_COMM_WORLD_RANK", "3", "OMPI_COMM_WORLD_SIZE", "4", "RINGO_ADDR", "h:1",
			"OMPI_MCA_ess_base_jobid", "633864193", "PMIX_NAMESPACE", "633864193", "OMPI_MCA_orte_precondition_transports", "1f369f7623ed5feb-51d914cae86e5565"),
			"openmpi-633864193", "1f369f7623ed5feb-51d914cae86e5565", 3, 4},
		{"OpenMPI 5 (PMIx)", envOf("OMPI_COMM_WORLD_RANK", "0", "OMPI_COMM_WORLD_SIZE", "2", "RINGO_ADDR", "h:1", "PMIX_NAMESPACE", "prterun-node1-4242@1"),
			"pmix-prterun-node1-4242@1", "", 0, 2},
		{"mpirun inside a Slurm allocation", envOf("OMPI_COMM_WORLD_RANK", "0", "OMPI_COMM_WORLD_SIZE", "2", "RINGO_ADDR", "h:1",
			"OMPI_MCA_ess_base_jobid", "5", "SLURM_JOB_ID", "99", "SLURM_PROCID", "0", "SLURM_NTASKS", "1"),
			"openmpi-5", "", 0, 2},
		{"RINGO_TOKEN wins over OpenMPI's key", envOf("OMPI_COMM_WORLD_RANK", "0", "OMPI_COMM_WORLD_SIZE", "2", "RINGO_ADDR", "h:1",
			"OMPI_MCA_orte_precondition_transports", "key", "RINGO_TOKEN", "mine"),
			"", "mine", 0, 2},
		{"RINGO_JOB_ID wins over the launcher's", envOf("OMPI_COMM_WORLD_RANK", "0", "OMPI_COMM_WORLD_SIZE", "2", "RINGO_ADDR", "h:1",
			"OMPI_MCA_ess_base_jobid", "5", "RINGO_JOB_ID", "mine"),
			"mine", "", 0, 2},
		{"Slurm step", envOf("SLURM_PROCID", "2", "SLURM_NTASKS", "3", "RINGO_ADDR", "h:1", "SLURM_JOB_ID", "4711", "SLURM_STEP_ID", "0"),
			"slurm-4711.0", "", 2, 3},
		{"Slurm, older names", envOf("SLURM_PROCID", "0", "SLURM_NTASKS", "3", "RINGO_ADDR", "h:1", "SLURM_JOBID", "4711", "SLURM_STEPID", "2"),
			"slurm-4711.2", "", 0, 3},
		{"MPICH under srun", envOf("PMI_RANK", "1", "PMI_SIZE", "2", "RINGO_ADDR", "h:1", "SLURM_JOB_ID", "4711", "SLURM_STEP_ID", "3"),
			"slurm-4711.3", "", 1, 2},
		{"torchrun --rdzv-id", envOf("RANK", "1", "WORLD_SIZE", "2", "MASTER_ADDR", "m", "MASTER_PORT", "29500",
			"TORCHELASTIC_RUN_ID", "exp42", "TORCHELASTIC_RESTART_COUNT", "1"),
			"torchrun-exp42.1", "", 1, 2},
		{"torchrun's default id is none", envOf("RANK", "1", "WORLD_SIZE", "2", "MASTER_ADDR", "m", "MASTER_PORT", "29500",
			"TORCHELASTIC_RUN_ID", "none", "TORCHELASTIC_RESTART_COUNT", "0"),
			"", "", 1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := configFrom(tc.env)
			require.NoError(t, err)
			assert.Equal(t, tc.job, cfg.JobID)
			assert.Equal(t, tc.token, cfg.Token)
			assert.Equal(t, [2]int{tc.rank, tc.ranks}, [2]int{cfg.Rank, cfg.Size})
		})
	}
}

// A program started on its own is told what it is and how to start it.
func TestNoRankSaysHowToStartAJob(t *testing.T) {
	_, err := configFrom(envOf())
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorIs(t, err, ErrNoRank)
	for _, want := range []string{"no rank in the environment", "one rank of a job", "ringrun -np 4", "collective.Local"} {
		assert.Contains(t, err.Error(), want)
	}
}

// Under a launcher that serves the rendezvous itself
// (RINGO_RENDEZVOUS_EXTERNAL=1), rank 0 only joins like every other rank.
func TestExternalRendezvous(t *testing.T) {
	const n = 3
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ln, err := transport.ListenTCP(ctx, "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	id := transport.Identity{Token: []byte("s3cret"), Job: "ext", Size: n}
	var (
		mu         sync.Mutex
		registered []int
	)
	served := make(chan error, 1)
	go func() {
		served <- rendezvous.ServeWith(ctx, ln, id, rendezvous.ServeOptions{OnRegister: func(rank int, _ string) {
			mu.Lock()
			registered = append(registered, rank)
			mu.Unlock()
		}})
	}()

	comms := make([]*Comm, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg, err := configFrom(envOf("RINGO_RANK", strconv.Itoa(r), "RINGO_WORLD_SIZE", strconv.Itoa(n),
				"RINGO_ADDR", ln.Addr().String(), "RINGO_TOKEN", "s3cret", "RINGO_JOB_ID", "ext",
				"RINGO_RENDEZVOUS_EXTERNAL", "1"))
			if err == nil {
				comms[r], err = New(ctx, cfg)
			}
			errs[r] = err
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range comms {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	for r, err := range errs {
		require.NoError(t, err, "rank %d", r) // rank 0 serving too would have found the port taken
	}
	require.NoError(t, <-served)
	mu.Lock()
	slices.Sort(registered)
	assert.Equal(t, []int{0, 1, 2}, registered, "every rank joined the external rendezvous")
	mu.Unlock()

	bufs := make([][]int32, n)
	for r := range n {
		bufs[r] = []int32{int32(r), 10}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = AllReduce(ctx, comms[r], bufs[r], Sum)
		}()
	}
	wg.Wait()
	for r := range n {
		require.NoError(t, errs[r], "rank %d", r)
		assert.Equal(t, []int32{0 + 1 + 2, 10 * n}, bufs[r], "rank %d", r)
	}
}
