package pipechart_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/pipechart"
)

func TestDrawWritesEachFormat(t *testing.T) {
	plan, err := parallel.NewPipelinePlan(parallel.Interleaved1F1B, 4, 2, 8)
	require.NoError(t, err)
	trace, err := plan.Simulate(parallel.DefaultPipelineCosts)
	require.NoError(t, err)
	dir := t.TempDir()
	if out := os.Getenv("PIPECHART_OUT"); out != "" {
		dir = out
	}
	for ext, magic := range map[string][]byte{"svg": []byte("<svg"), "png": []byte("\x89PNG")} {
		file := filepath.Join(dir, "interleaved."+ext)
		require.NoError(t, pipechart.Draw(file, trace, ""))
		data, err := os.ReadFile(file)
		require.NoError(t, err)
		require.True(t, bytes.Contains(data[:min(len(data), 512)], magic), "%s does not start as a %s", file, ext)
	}
	if ext := filepath.Join(dir, "x.svg"); true {
		require.NoError(t, pipechart.Draw(ext, trace, "a title"))
		data, err := os.ReadFile(ext)
		require.NoError(t, err)
		require.Contains(t, string(data), "a title")
		require.Contains(t, string(data), "7B7", "the last stage's last backward is labelled")
	}
}

func TestDrawRejectsWhatItCannotDraw(t *testing.T) {
	require.Error(t, pipechart.Draw(filepath.Join(t.TempDir(), "x.png"), nil, ""))
	plan, err := parallel.NewPipelinePlan(parallel.GPipe, 2, 1, 2)
	require.NoError(t, err)
	trace, err := plan.Simulate(parallel.DefaultPipelineCosts)
	require.NoError(t, err)
	require.Error(t, pipechart.Draw(filepath.Join(t.TempDir(), "noext"), trace, ""))
	require.Error(t, pipechart.Draw(filepath.Join(t.TempDir(), "x.nosuchformat"), trace, ""))
}
