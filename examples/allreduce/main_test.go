package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// clearLaunchers hides any launcher's variables the test runs under.
func clearLaunchers(t *testing.T) {
	for _, name := range []string{"RINGO_RANK", "RINGO_WORLD_SIZE", "RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
		"OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS"} {
		t.Setenv(name, "")
	}
}

func runArgs(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestBadArguments(t *testing.T) {
	clearLaunchers(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-local", "0"}, "-local 0: want at least 1 rank"},
		{[]string{"-local", "-1"}, "-local -1: want at least 1 rank"},
		{[]string{"-sizes=-1K"}, `-sizes: bad size "-1K": want a byte count such as 4, 64K or 16M`},
		{[]string{"-sizes=4,x"}, `bad size "x"`},
		{[]string{"-sizes=6"}, `size "6" is not a whole number of float32 values`},
		{[]string{"-sizes=99999999M"}, `size "99999999M" is too large`},
		{[]string{"-local", "2", "-transport", "pigeon"}, `-transport "pigeon": want tcp, quic, shm or mem`},
		{[]string{"-transport", "mem"}, "-transport applies to -local only"},
		{[]string{"-local", "2", "-budget", "0s"}, "-budget 0s: want a positive duration"},
		{[]string{"-local", "2", "extra"}, `unexpected argument "extra"`},
	} {
		code, _, stderr := runArgs(tc.args...)
		assert.Equal(t, 2, code, "%q", tc.args)
		assert.Contains(t, stderr, tc.want, "%q", tc.args)
	}
}

// Started without a launcher or -local, it says what it is and how to run it.
func TestNoRankInTheEnvironment(t *testing.T) {
	clearLaunchers(t)
	code, _, stderr := runArgs("-sizes", "4")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "no rank in the environment")
	assert.Contains(t, stderr, "allreduce -local 4")
}

// The demo's table: one row per size, every result checked (#wrong 0), and
// the bus bandwidth algbw·2(n-1)/n.
func TestLocalSweep(t *testing.T) {
	for _, transport := range []string{"MEM", "tcp", "Shm"} {
		code, stdout, stderr := runArgs("-local", "3", "-transport", transport, "-sizes", "4,1K,12", "-budget", "5ms")
		require.Equal(t, 0, code, stderr)
		assert.Contains(t, stdout, "# 3 ranks in one process over "+strings.ToLower(transport))
		assert.Regexp(t, `size\(B\) +calls +time\(us\) +algbw\(GB/s\) +busbw\(GB/s\) +#wrong`, stdout)
		row := regexp.MustCompile(`(?m)^ +(\d+) +(\d+) +([\d.]+) +([\d.]+) +([\d.]+) +(\d+)$`)
		rows := row.FindAllStringSubmatch(stdout, -1)
		require.Len(t, rows, 3, stdout)
		for i, size := range []string{"4", "1024", "12"} {
			assert.Equal(t, size, rows[i][1])
			assert.Equal(t, "0", rows[i][6], "#wrong")
		}
	}
}
