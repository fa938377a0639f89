package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPlot(t *testing.T) {
	dir := t.TempDir()
	in, png := filepath.Join(dir, "r.csv"), filepath.Join(dir, "r.png")
	require.NoError(t, os.WriteFile(in, []byte("library,n,bytes,time_us,algbw,busbw\nx,2,4,7,0.001,0.001\nx,2,1024,8,0.128,0.128\n"), 0o644))
	var out, errb bytes.Buffer
	require.Equal(t, 0, run([]string{"-o", png, "-table", "-title", "t", in}, &out, &errb), errb.String())
	assert.Contains(t, out.String(), "| 1K | 8 / 0.128 |")
	st, err := os.Stat(png)
	require.NoError(t, err)
	assert.Positive(t, st.Size())

	assert.Equal(t, 2, run(nil, &out, &errb))
	assert.Equal(t, 1, run([]string{filepath.Join(dir, "missing.csv")}, &out, &errb))
	assert.Equal(t, 2, run([]string{"-bogus"}, &out, &errb))
	assert.Equal(t, 0, run([]string{"-h"}, &out, &errb))
}
