//go:build !race

package parallel

const pipeRaceEnabled = false
