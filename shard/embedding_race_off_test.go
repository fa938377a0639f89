//go:build !race

package shard

const embRace = false
