//go:build race

package parallel_test

// The race detector allocates: allocation counts are checked without it.
const raceEnabled = true
