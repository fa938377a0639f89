package rankdesc

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
)

func TestReaderReadsWhatWasWritten(t *testing.T) {
	b := binary.AppendUvarint(nil, 300)
	b = AppendString(b, "head0.w")
	b = AppendString(b, "")
	b = binary.AppendUvarint(b, 0)
	r := NewReader(b)
	assert.Equal(t, uint64(300), r.Uvarint())
	assert.Equal(t, "head0.w", r.Str())
	assert.Equal(t, "", r.Str())
	assert.Equal(t, uint64(0), r.Uvarint())
	require.NoError(t, r.Err())
}

// Any prefix of a description, and lengths that promise more than there
// is, read as zeros with ErrShort: never a panic.
func TestReaderSurvivesMalformedBytes(t *testing.T) {
	whole := AppendString(binary.AppendUvarint(nil, 7), "param")
	for n := range len(whole) {
		r := NewReader(whole[:n])
		r.Uvarint()
		r.Str()
		assert.ErrorIs(t, r.Err(), ErrShort, "%d bytes", n)
		assert.Zero(t, r.Uvarint(), "after an error")
	}
	r := NewReader(binary.AppendUvarint(nil, 1<<40))
	assert.Empty(t, r.Str())
	assert.ErrorIs(t, r.Err(), ErrShort)
	r = NewReader([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	r.Uvarint()
	assert.ErrorIs(t, r.Err(), ErrShort, "a uvarint that overflows")
}

func TestBroadcastGivesEveryRankRankZerosBytes(t *testing.T) {
	const n = 3
	comms, err := collective.Local(n)
	require.NoError(t, err)
	defer testjob.CloseAll(comms)
	got := make([][]byte, n)
	testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
		got[r] = AppendString(nil, string(rune('a'+r)))
		if r == 1 {
			got[r] = nil
		}
		return Broadcast(context.Background(), comms[r], &got[r])
	}))
	for r := range n {
		assert.Equal(t, AppendString(nil, "a"), got[r], "rank %d", r)
	}
}
