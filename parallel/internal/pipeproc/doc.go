// Package pipeproc holds the tests of parallel.Pipeline whose ranks are
// operating-system processes (the test binary started again as each rank),
// so that a rank can really die: a SIGKILLed stage must stop every rank of
// its pipeline and of its data-parallel group, naming it. It is a package of
// its own because the test binary's TestMain doubles as the rank's main.
package pipeproc
