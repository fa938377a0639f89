package collective

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
			Config{Rank: 1, Size: 2, Addr: "m:29500", JobID: "run7"}},
		{"torchrun agent store", envOf("RANK", "0", "WORLD_SIZE", "2", "MASTER_ADDR", "m", "MASTER_PORT", "29500", "TORCHELASTIC_USE_AGENT_STORE", "True"),
			Config{Rank: 0, Size: 2, Addr: "m:29501"}},
		{"openmpi", envOf("OMPI_COMM_WORLD_RANK", "3", "OMPI_COMM_WORLD_SIZE", "8", "RINGO_ADDR", "h:2"),
			Config{Rank: 3, Size: 8, Addr: "h:2"}},
		{"slurm", envOf("SLURM_PROCID", "5", "SLURM_NTASKS", "6", "RINGO_ADDR", "h:3", "SLURM_JOB_ID", "99", "RINGO_TIMEOUT", "2.5"),
			Config{Rank: 5, Size: 6, Addr: "h:3", JobID: "99", Timeout: 2500 * time.Millisecond}},
		{"ringo wins over torchrun", envOf("RINGO_RANK", "0", "RINGO_WORLD_SIZE", "1", "RANK", "3", "WORLD_SIZE", "4"),
			Config{Rank: 0, Size: 1}},
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
		"bad master port": envOf("RANK", "0", "WORLD_SIZE", "2", "MASTER_ADDR", "m", "MASTER_PORT", "x"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := configFrom(env)
			require.ErrorIs(t, err, ErrInvalid)
		})
	}
}
