package collective

import (
	"github.com/ringo-ml/ringo/internal/algo/tree"
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

// hierBroadcast copies root's buf to every rank in two steps over binomial
// trees: from root to the ranks of its local rank on the other hosts, then
// on every host from that rank to the others (begin has been called; the
// topology is hierarchical). The whole vector crosses each host's network
// interface once, as in the flat chain, but in ceil(log2 H) latencies of
// the slow links instead of N-1 (or the flat tree's ceil(log2 N)).
func hierBroadcast[T Elem](c *Comm, buf []T, root int) error {
	t := &c.topo
	rootLocal := t.localIndex[root]
	if t.localRank == rootLocal {
		if err := tree.Broadcast(t.hostIndex, t.hosts, t.host[root], c.crossPeers, buf); err != nil {
			return err
		}
	}
	return tree.Broadcast(t.localRank, t.localSize(), rootLocal, c.localPeers, buf)
}

// hierBroadcastSeconds is the model's time for hierBroadcast of bytes: a
// tree across hosts, then one within each.
func hierBroadcastSeconds(local, remote costModel, localSize, hosts, bytes int) float64 {
	return remote.seconds(remote.broadcastCost(algoDoubling, hosts, bytes)) +
		local.seconds(local.broadcastCost(algoDoubling, localSize, bytes))
}

// hierAllGather gathers every rank's send into recv in two ring allgathers
// and a copy (begin has been called; the topology is hierarchical):
//
//  1. across hosts, among the ranks of this rank's local rank: each gets
//     the blocks of its counterparts on every host;
//  2. within each host: each gets its host's ranks' results of step 1, so
//     every block;
//  3. the blocks, staged in host-major order, are copied to their ranks'
//     places in recv.
//
// Each host's interface sends (H-1)/H of recv, against the flat ring's
// (N-1)/N (one rank per host sends across, but every block passes).
func hierAllGather[T Elem](c *Comm, send, recv []T) error {
	t := &c.topo
	m, H, L := len(send), t.hosts, t.localSize()
	stage := scratchOf[T](c, (H+L*H)*m)
	cross, all := stage[:H*m], stage[H*m:]
	if err := ring.AllGather(c.hierCross, send, cross); err != nil {
		return err
	}
	if err := ring.AllGather(c.hierLocal, cross, all); err != nil {
		return err
	}
	for i := range L { // all holds, by local rank i, the blocks of host 0..H-1
		for h := range H {
			r := t.hostRanks[h][i]
			copy(recv[r*m:(r+1)*m], all[(i*H+h)*m:(i*H+h+1)*m])
		}
	}
	return nil
}

// allGatherCost is the flat ring's AllGather of bytes in all (recv) on
// size ranks: size-1 rounds, (size-1)/size of it sent by each rank.
func allGatherCost(size, bytes int) cost {
	n, N := float64(bytes), float64(size)
	return cost{rounds: N - 1, wire: (N - 1) / N * n}
}

// hierAllGatherSeconds is the model's time for hierAllGather of bytes in
// all (recv): the ring across hosts sends (H-1)/H of them through each
// host's interface (its L ranks at once), the ring within a host
// (L-1)/L, and the staged blocks are copied once.
func hierAllGatherSeconds(local, remote costModel, localSize, hosts, bytes int) float64 {
	n, L, H := float64(bytes), float64(localSize), float64(hosts)
	between := cost{rounds: H - 1, wire: (H - 1) / H * n}
	within := cost{rounds: L - 1, wire: (L-1)/L*n + n}
	return remote.seconds(between) + local.seconds(within)
}
