//go:build race

package shard_test

// The race detector allocates and slows everything: allocation counts and
// the 10M-parameter memory figures are checked without it.
const raceEnabled = true
