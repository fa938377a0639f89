package shm

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// CreateSegmentForTest creates a segment as a link's setup does and returns
// its name and mode, having removed it.
func CreateSegmentForTest(t *testing.T) (string, os.FileMode) {
	g, name, err := createSegment(segmentDir, MinSegmentBytes)
	require.NoError(t, err)
	defer g.release()
	st, err := os.Lstat(filepath.Join(segmentDir, name))
	require.NoError(t, err)
	require.NoError(t, unlinkSegment(segmentDir, name))
	return name, st.Mode()
}

// OpenSegmentForTest opens a segment by name as a link's setup does.
func OpenSegmentForTest(name string) error {
	g, err := openSegment(segmentDir, name)
	if g != nil {
		g.release()
	}
	return err
}
