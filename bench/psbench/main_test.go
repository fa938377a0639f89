package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestOptions(t *testing.T) {
	o, err := parseOptions([]string{"-sizes", "4,1K,2M", "-densities", "0.5,1"}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, []int{4, 1 << 10, 2 << 20}, o.sizes)
	require.Equal(t, []float64{0.5, 1}, o.densities)
	for _, bad := range [][]string{
		{"-exp", "x"}, {"-method", "tree"}, {"-sizes", "1"}, {"-sizes", "3M,x"}, {"-densities", "0"},
		{"-densities", "1.5"}, {"-steps", "0"}, {"-servers", "0"},
	} {
		_, err := parseOptions(bad, io.Discard)
		require.Error(t, err, "%v", bad)
	}
}

// The charts come out of a CSV of both experiments; a malformed CSV is
// refused with its line.
func TestCharts(t *testing.T) {
	dir := t.TempDir()
	csv := filepath.Join(dir, "r.csv")
	require.NoError(t, os.WriteFile(csv, []byte(`experiment,method,workers,servers,bytes,density,time_us,dense_share
ringps,ring,2,0,1048576,0,8000,0
ringps,ps,2,1,1048576,0,20000,0
ringps,ring,4,0,1048576,0,9000,0
ringps,ps,4,1,1048576,0,40000,0
ringps,ps,4,2,1048576,0,21000,0
sparse,sparse,4,0,25600000,0.01,8000,0
sparse,dense,4,0,25600000,0.01,300000,1
sparse,auto,4,0,25600000,0.01,8100,0
sparse,sparse,4,0,25600000,0.5,500000,0
sparse,dense,4,0,25600000,0.5,400000,1
sparse,auto,4,0,25600000,0.5,400000,1
`), 0o644))
	require.NoError(t, drawCharts(csv, dir, "test"))
	for _, name := range []string{"ringps.png", "sparse.png"} {
		st, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err)
		require.Greater(t, st.Size(), int64(1000))
	}
	require.NoError(t, os.WriteFile(csv, []byte("ringps,ring,2,0,x,0,1,0\n"), 0o644))
	require.ErrorContains(t, drawCharts(csv, dir, ""), "r.csv:1")
}
