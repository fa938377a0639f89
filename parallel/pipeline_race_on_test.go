//go:build race

package parallel

// The race detector's bookkeeping allocates: allocation counts are checked
// in normal builds only.
const pipeRaceEnabled = true
