package collective

import (
	"github.com/ringo-ml/ringo/link"
	"github.com/ringo-ml/ringo/ring"
)

// The hierarchical AllReduce, for H hosts of L ranks each, in three steps
// over the communicator's own links (all of one call, so the frames of each
// link stay in the order both its ends expect):
//
//  1. reduce-scatter within each host, around the ring of its L ranks
//     (hierLocal): local rank i ends with chunk i of the vector reduced
//     over its host;
//  2. AllReduce of chunk i across hosts, around the ring of the H ranks of
//     local rank i (hierCross), all local ranks at once;
//  3. allgather within each host.
//
// Every element is reduced in an order that is the same on every rank
// (each chunk on one rank of each ring, then copied), so every rank ends
// with the same bits. Between hosts it moves 2(H-1)/H of the vector per
// host instead of the flat ring's 2(N-1)/N, and takes 2(H-1) latencies of
// the slow links instead of 2(N-1).

// hierAllReduce runs the hierarchical AllReduce (begin has been called; the
// topology is hierarchical).
func hierAllReduce[T Elem](c *Comm, buf []T, red link.Reducer[T]) error {
	sum := link.Reducer[T]{ReduceTo: red.ReduceTo} // an average divides once, by every rank
	if err := ring.ReduceScatterChunks(c.hierLocal, buf, sum); err != nil {
		return err
	}
	lo, hi := ring.ChunkBounds(len(buf), c.topo.localSize(), c.topo.localRank)
	chunk := buf[lo:hi]
	if err := ring.AllReduce(c.hierCross, chunk, sum); err != nil {
		return err
	}
	if red.Div != nil {
		red.Div(chunk, c.size) // the same bits on every host: each holds the same chunk
	}
	return ring.AllGatherChunks(c.hierLocal, buf)
}

// hierAllReduceSeconds is the model's time for the hierarchical AllReduce
// of bytes on hosts hosts of localSize ranks, with local pricing the links
// within a host and remote those between hosts:
//
//	within:  2(L-1) rounds, 2(L-1)/L·n wire, (L-1)/L·n reduced
//	between: 2(H-1) rounds, 2(H-1)/H·n wire, (H-1)/H·n/L reduced
//
// The wire between hosts is what all L ranks of a host send at once,
// 2(H-1)/H·n/L each, through the one network interface they share: the
// interface's time for L times a rank's bytes. (The flat algorithms are
// priced as if each rank had the link to itself, which favours them.)
func hierAllReduceSeconds(local, remote costModel, localSize, hosts, bytes int) float64 {
	n, L, H := float64(bytes), float64(localSize), float64(hosts)
	within := cost{rounds: 2 * (L - 1), wire: 2 * (L - 1) / L * n, reduced: (L - 1) / L * n}
	between := cost{rounds: 2 * (H - 1), wire: 2 * (H - 1) / H * n, reduced: (H - 1) / H * n / L}
	return local.seconds(within) + remote.seconds(between)
}
