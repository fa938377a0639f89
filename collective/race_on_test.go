//go:build race

package collective_test

// The race detector's own bookkeeping allocates; allocation counts are
// checked in normal builds only.
const raceEnabled = true
