//go:build race

package ring

const codecRaceEnabled = true
