package checkpoint_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/checkpoint"
)

func sample() *checkpoint.Checkpoint {
	c := &checkpoint.Checkpoint{
		Step: 1234, Epoch: -2, RNG: []byte{1, 2, 3},
		Meta: map[string]string{"model": "mlp", "lr": "0.1", "": "empty key"},
	}
	c.Add("w", []float32{1, -2, 3.5, float32(math.Inf(1)), float32(math.NaN()), math.SmallestNonzeroFloat32})
	c.Add("empty", []float32{})
	c.Tensors = append(c.Tensors,
		checkpoint.Tensor{Name: "matrix", Shape: []int{2, 3}, Data: []float32{1, 2, 3, 4, 5, 6}},
		checkpoint.Tensor{Name: "shard", Shape: []int{10, 4}, Offset: 12, Data: []float32{7, 8, 9, 10, 11}},
		checkpoint.Tensor{Name: "scalar", Shape: []int{}, Data: []float32{42}},
	)
	return c
}

func TestRoundTripKeepsEveryBitAndField(t *testing.T) {
	c := sample()
	b, err := checkpoint.Marshal(c)
	require.NoError(t, err)
	got, err := checkpoint.Unmarshal(b)
	require.NoError(t, err)
	assert.Equal(t, c.Step, got.Step)
	assert.Equal(t, c.Epoch, got.Epoch)
	assert.Equal(t, c.RNG, got.RNG)
	assert.Equal(t, c.Meta, got.Meta)
	require.Len(t, got.Tensors, len(c.Tensors))
	for i, want := range c.Tensors {
		g := got.Tensors[i]
		assert.Equal(t, want.Name, g.Name)
		assert.Equal(t, want.Offset, g.Offset, want.Name)
		if want.Shape == nil {
			assert.Equal(t, []int{len(want.Data)}, g.Shape, want.Name)
		} else {
			assert.Equal(t, want.Shape, g.Shape, want.Name)
		}
		require.Len(t, g.Data, len(want.Data), want.Name)
		for j := range want.Data {
			assert.Equal(t, math.Float32bits(want.Data[j]), math.Float32bits(g.Data[j]), "%s[%d]", want.Name, j)
		}
	}
	// Encoding is canonical: decoding and encoding again gives the same bytes.
	again, err := checkpoint.Marshal(got)
	require.NoError(t, err)
	assert.Equal(t, b, again)

	assert.True(t, got.Find("matrix").Whole())
	assert.False(t, got.Find("shard").Whole())
	dst := make([]float32, 6)
	require.NoError(t, got.CopyTo("matrix", dst))
	assert.Equal(t, []float32{1, 2, 3, 4, 5, 6}, dst)
	require.ErrorIs(t, got.CopyTo("matrix", make([]float32, 5)), checkpoint.ErrInvalid)
	require.ErrorIs(t, got.CopyTo("shard", make([]float32, 5)), checkpoint.ErrInvalid)
	err = got.CopyTo("nope", dst)
	require.ErrorIs(t, err, checkpoint.ErrInvalid)
	assert.Contains(t, err.Error(), `"nope"`)
}

// The layout in the package documentation, written out by hand, is what
// Marshal writes.
func TestLayoutIsTheDocumentedOne(t *testing.T) {
	le := binary.LittleEndian
	str := func(b []byte, s string) []byte { return append(le.AppendUint32(b, uint32(len(s))), s...) }
	var hdr []byte
	hdr = le.AppendUint64(hdr, 7) // step
	hdr = le.AppendUint64(hdr, 2) // epoch
	hdr = str(hdr, "\x09")        // RNG
	hdr = le.AppendUint32(hdr, 1) // one metadata pair
	hdr = str(str(hdr, "k"), "v") //
	hdr = le.AppendUint32(hdr, 1) // one tensor
	hdr = str(hdr, "t")           // name
	hdr = append(hdr, 1, 2)       // float32, 2 dimensions
	hdr = le.AppendUint64(le.AppendUint64(hdr, 2), 3)
	hdr = le.AppendUint64(hdr, 1) // offset
	hdr = le.AppendUint64(hdr, 2) // count
	data := le.AppendUint32(le.AppendUint32(nil, math.Float32bits(0.5)), math.Float32bits(-1))
	hdr = le.AppendUint32(hdr, crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli)))
	file := append([]byte("RINGOCKP"), le.AppendUint32(le.AppendUint32(nil, 1), uint32(len(hdr)))...)
	file = append(file, hdr...)
	file = le.AppendUint32(file, crc32.Checksum(file, crc32.MakeTable(crc32.Castagnoli)))
	file = append(file, data...)

	c := &checkpoint.Checkpoint{Step: 7, Epoch: 2, RNG: []byte{9}, Meta: map[string]string{"k": "v"},
		Tensors: []checkpoint.Tensor{{Name: "t", Shape: []int{2, 3}, Offset: 1, Data: []float32{0.5, -1}}}}
	b, err := checkpoint.Marshal(c)
	require.NoError(t, err)
	assert.Equal(t, file, b)
}

// Cut anywhere, a checkpoint is refused with ErrCorrupt; so is any flipped
// byte, and anything appended.
func TestTruncatedOrCorruptBytesAreRefused(t *testing.T) {
	b, err := checkpoint.Marshal(sample())
	require.NoError(t, err)
	for n := range len(b) {
		_, err := checkpoint.Unmarshal(b[:n])
		require.ErrorIs(t, err, checkpoint.ErrCorrupt, "cut at %d of %d", n, len(b))
	}
	for i := range b {
		if i >= 8 && i < 12 {
			continue // the version: ErrVersion, below
		}
		bad := bytes.Clone(b)
		bad[i] ^= 0x10
		_, err := checkpoint.Unmarshal(bad)
		require.ErrorIs(t, err, checkpoint.ErrCorrupt, "byte %d flipped", i)
	}
	_, err = checkpoint.Unmarshal(append(bytes.Clone(b), 0))
	require.ErrorIs(t, err, checkpoint.ErrCorrupt)
	assert.Contains(t, err.Error(), "after the last tensor")

	bad := bytes.Clone(b)
	bad[len(bad)-1] ^= 1
	_, err = checkpoint.Unmarshal(bad)
	assert.ErrorContains(t, err, `tensor "scalar"`, "a damaged tensor is named")

	bad = bytes.Clone(b)
	binary.LittleEndian.PutUint32(bad[8:], 2)
	_, err = checkpoint.Unmarshal(bad)
	require.ErrorIs(t, err, checkpoint.ErrVersion)
}

func TestInvalidCheckpointsAreNotWritten(t *testing.T) {
	for name, c := range map[string]*checkpoint.Checkpoint{
		"duplicate": {Tensors: []checkpoint.Tensor{{Name: "a"}, {Name: "a"}}},
		"no name":   {Tensors: []checkpoint.Tensor{{Data: []float32{1}}}},
		"overflow":  {Tensors: []checkpoint.Tensor{{Name: "a", Shape: []int{2}, Offset: 1, Data: []float32{1, 2}}}},
		"negative":  {Tensors: []checkpoint.Tensor{{Name: "a", Shape: []int{-1}}}},
		"no shape":  {Tensors: []checkpoint.Tensor{{Name: "a", Offset: 1, Data: []float32{1}}}},
		"rank 9":    {Tensors: []checkpoint.Tensor{{Name: "a", Shape: make([]int, 9)}}},
	} {
		_, err := checkpoint.Marshal(c)
		assert.ErrorIs(t, err, checkpoint.ErrInvalid, name)
	}
}

func TestSaveIsAtomicAndLoadReadsItBack(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ck")
	_, err := checkpoint.Load(path)
	require.ErrorIs(t, err, fs.ErrNotExist)

	first := sample()
	require.NoError(t, checkpoint.Save(path, first))
	before, err := os.ReadFile(path)
	require.NoError(t, err)
	got, err := checkpoint.Load(path)
	require.NoError(t, err)
	assert.Equal(t, first.Step, got.Step)

	// A save that fails midway leaves the previous file and no temporary.
	bad := sample()
	bad.Tensors = append(bad.Tensors, checkpoint.Tensor{Name: "w"})
	require.ErrorIs(t, checkpoint.Save(path, bad), checkpoint.ErrInvalid)
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, before, after)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file is left behind")

	second := sample()
	second.Step = 99
	require.NoError(t, checkpoint.Save(path, second))
	got, err = checkpoint.Load(path)
	require.NoError(t, err)
	assert.Equal(t, int64(99), got.Step)

	require.NoError(t, os.WriteFile(path, before[:len(before)-3], 0o644))
	_, err = checkpoint.Load(path)
	require.ErrorIs(t, err, checkpoint.ErrCorrupt)
	assert.Contains(t, err.Error(), path)
}

// FuzzUnmarshal: no input makes Unmarshal panic or allocate without bound;
// what it accepts is canonical (encoding it again gives the same bytes);
// what it refuses matches ErrCorrupt or ErrVersion.
func FuzzUnmarshal(f *testing.F) {
	for _, c := range []*checkpoint.Checkpoint{sample(), {}, {Step: 1, Tensors: []checkpoint.Tensor{{Name: "x", Data: []float32{1}}}}} {
		b, err := checkpoint.Marshal(c)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Add([]byte("RINGOCKP"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := checkpoint.Unmarshal(b)
		if err != nil {
			if !errors.Is(err, checkpoint.ErrCorrupt) && !errors.Is(err, checkpoint.ErrVersion) {
				t.Fatalf("an error that is neither ErrCorrupt nor ErrVersion: %v", err)
			}
			return
		}
		again, err := checkpoint.Marshal(c)
		require.NoError(t, err)
		require.Equal(t, b, again)
	})
}
