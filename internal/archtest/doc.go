// Package archtest holds the tests that keep ringo's layers as
// ../../../shared/DESIGN.md draws them ("Layers"): which package may import
// which, that nothing above transport listens, dials or handshakes, and that
// no exported identifier of a public package mentions an internal type. It
// has no code of its own; its tests read the module with go list and
// go/parser, and the public packages' export data with go/types.
package archtest
