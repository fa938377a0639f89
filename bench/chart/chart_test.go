package chart

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func samplePoints() []Point {
	var ps []Point
	for _, lib := range []string{"ringo-tcp", "ompi-tcp"} {
		for _, n := range []int{2, 4} {
			for s := 4.0; s <= 64<<20; s *= 16 {
				ps = append(ps, Point{Library: lib, N: n, Bytes: s, TimeUS: 10 + s/1e3, BusBW: s / (10 + s/1e3) / 1e3})
			}
		}
	}
	return ps
}

func TestDrawFormats(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"c.png", "c.svg"} {
		file := filepath.Join(dir, name)
		require.NoError(t, Draw(file, samplePoints(), "test chart"))
		st, err := os.Stat(file)
		require.NoError(t, err)
		assert.Greater(t, st.Size(), int64(1000), name)
	}
	data, err := os.ReadFile(filepath.Join(dir, "c.png"))
	require.NoError(t, err)
	assert.Equal(t, "\x89PNG", string(data[:4]))
}

func TestDrawErrors(t *testing.T) {
	dir := t.TempDir()
	assert.Error(t, Draw(filepath.Join(dir, "x.png"), nil, ""))
	assert.Error(t, Draw(filepath.Join(dir, "x.doc"), samplePoints(), ""))
	assert.Error(t, Draw(filepath.Join(dir, "no", "x.png"), samplePoints(), ""))
}

func TestSizeTicks(t *testing.T) {
	ts := sizeTicks{}.Ticks(4, 64<<20)
	var labels []string
	for _, tk := range ts {
		if tk.Label != "" {
			labels = append(labels, tk.Label)
		}
	}
	assert.Equal(t, []string{"4", "64", "1K", "16K", "256K", "4M", "64M"}, labels)
	assert.Len(t, ts, 25)
	assert.Equal(t, "1.5K", HumanBytes(1536))
}

func TestReadCSV(t *testing.T) {
	in := "library,n,bytes,time_us,algbw,busbw\nompi-tcp,2,4,7.1,0.0006,0.0006\nringo-tcp,4,1024,50,0.02,0.03\n"
	ps, err := ReadCSV(stringsReader(in))
	require.NoError(t, err)
	assert.Equal(t, []Point{
		{Library: "ompi-tcp", N: 2, Bytes: 4, TimeUS: 7.1, BusBW: 0.0006},
		{Library: "ringo-tcp", N: 4, Bytes: 1024, TimeUS: 50, BusBW: 0.03},
	}, ps)
	_, err = ReadCSV(stringsReader("library,n,bytes\nx,2,4\n"))
	assert.ErrorContains(t, err, "time_us")
	_, err = ReadCSV(stringsReader("library,n,bytes,time_us,busbw\nx,two,4,1,1\n"))
	assert.ErrorContains(t, err, "line 2")
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

func TestWriteTable(t *testing.T) {
	var b strings.Builder
	WriteTable(&b, []Point{
		{Library: "a", N: 2, Bytes: 1024, TimeUS: 12.345, BusBW: 0.0829},
		{Library: "b", N: 2, Bytes: 4, TimeUS: 123456, BusBW: 0.00001},
		{Library: "a", N: 2, Bytes: 4, TimeUS: 7, BusBW: 0.0006},
	})
	assert.Equal(t, "\n2 ranks: time per call (us) / busbw (GB/s)\n\n| size | a | b |\n|---:|---:|---:|\n"+
		"| 4 | 7 / 6.00e-04 | 123456 / 1.00e-05 |\n| 1K | 12.3 / 0.0829 | |\n", b.String())
}
