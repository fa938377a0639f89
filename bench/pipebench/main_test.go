package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRunPrintsEveryConfiguration: a small sweep prints one row per
// configuration, with the theory beside the measurement, and writes the CSV
// and the timelines it is asked for.
func TestRunPrintsEveryConfiguration(t *testing.T) {
	dir := t.TempDir()
	var out, errs bytes.Buffer
	code := run(context.Background(), []string{"-schedules", "gpipe,interleaved", "-stages", "2", "-microbatches", "2,4",
		"-steps", "1", "-forward", "1ms", "-rows", "2", "-width", "8",
		"-csv", filepath.Join(dir, "b.csv"), "-timeline", filepath.Join(dir, "t.svg")}, &out, &errs)
	require.Equal(t, 0, code, errs.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2+4, out.String())
	require.Contains(t, lines[2], "gpipe  2  2  1")
	require.Contains(t, lines[2], "33.3", "GPipe P=2 M=2: theory 1/3")
	csv, err := os.ReadFile(filepath.Join(dir, "b.csv"))
	require.NoError(t, err)
	require.Len(t, strings.Split(strings.TrimSpace(string(csv)), "\n"), 1+4)
	svgs, err := filepath.Glob(filepath.Join(dir, "t-*.svg"))
	require.NoError(t, err)
	require.Len(t, svgs, 4)
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-schedules", "zb"}, {"-stages", "0"}, {"-compute", "gpu"}, {"-transport", "udp"}, {"-steps", "0"}} {
		require.Equal(t, 2, run(context.Background(), args, io.Discard, io.Discard), "%v", args)
	}
}
