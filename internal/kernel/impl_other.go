//go:build !amd64 || purego

package kernel

func archCandidates() []candidate { return nil }
