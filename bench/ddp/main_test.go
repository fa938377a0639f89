package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMain lets the test binary be one of the ranks run spawns.
func TestMain(m *testing.M) {
	if args, ok := os.LookupEnv("DDPBENCH_TEST_ARGS"); ok {
		os.Exit(run(context.Background(), strings.Fields(args), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestRowsForEveryModelAndMode runs a tiny benchmark as a 2-rank job and
// checks its CSV: a row per model and mode, positive times, the fastest step
// no slower than the median, samples/s from the median.
func TestRowsForEveryModelAndMode(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns rank processes")
	}
	args := "-models 20-8-3,10-4 -batch 5 -steps 3 -warmup 1 -modes compute,sync,overlap,comm -header"
	t.Setenv("DDPBENCH_TEST_ARGS", args)
	var out, errs bytes.Buffer
	// The parent spawns copies of this test binary; each runs args as a rank.
	code := run(context.Background(), append(strings.Fields(args), "-np", "2"), &out, &errs)
	require.Equal(t, 0, code, errs.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Equal(t, "impl,ranks,model,params,batch_per_rank,mode,step_ms,min_ms,samples_per_s", lines[0])
	require.Len(t, lines, 1+2*4)
	for i, line := range lines[1:] {
		f := strings.Split(line, ",")
		require.Len(t, f, 9, line)
		require.Equal(t, "ringo", f[0])
		require.Equal(t, "2", f[1])
		model, params := "20-8-3", "195" // 20·8+8 + 8·3+3
		if i >= 4 {
			model, params = "10-4", "44"
		}
		require.Equal(t, model, f[2])
		require.Equal(t, params, f[3])
		require.Equal(t, "5", f[4])
		require.Equal(t, []string{"compute", "sync", "overlap", "comm"}[i%4], f[5])
		median, err := strconv.ParseFloat(f[6], 64)
		require.NoError(t, err)
		fastest, err := strconv.ParseFloat(f[7], 64)
		require.NoError(t, err)
		perSec, err := strconv.ParseFloat(f[8], 64)
		require.NoError(t, err)
		require.Positive(t, fastest)
		require.LessOrEqual(t, fastest, median)
		// 2 ranks × 5 samples per median step, up to the rounding of the
		// printed median (to 0.001 ms).
		want := 10 / (median / 1e3)
		require.InDelta(t, want, perSec, want*(0.0006/median)+0.1)
	}
}

func TestOptions(t *testing.T) {
	o, err := parseOptions(nil, io.Discard)
	require.NoError(t, err)
	require.Equal(t, [][]int{{784, 256, 256, 10}, {784, 2048, 2048, 10}}, o.models)
	require.Equal(t, []string{"compute", "sync", "overlap"}, o.modes)
	for _, bad := range [][]string{{"-models", "784"}, {"-models", "784-x"}, {"-modes", "fast"}, {"-batch", "0"}, {"-bucket-mb", "0"}} {
		_, err := parseOptions(bad, io.Discard)
		require.Error(t, err, "%v", bad)
	}
}
