package main

import "math/rand/v2"

// The sample order is a function of the seed and the epoch only, never of
// the number of ranks or the mode: every mode trains on the same global
// batches, and a run resumed from a checkpoint at an epoch boundary sees the
// batches an uninterrupted run would.

// orderStream separates the sample-order streams from the model's
// initialisation streams (nn.NewMLP uses PCG(seed, layer)).
const orderStream = 1 << 40

// sampleOrder is epoch's permutation of the n training samples.
func sampleOrder(seed uint64, epoch, n int) []int {
	return rand.New(rand.NewPCG(seed, orderStream+uint64(epoch))).Perm(n)
}

// stepsPerEpoch is the number of global batches in an epoch of n samples;
// the last one is smaller when batch does not divide n.
func stepsPerEpoch(n, batch int) int { return (n + batch - 1) / batch }

// globalBatch is the samples of batch number b of an epoch.
func globalBatch(order []int, b, batch int) []int {
	return order[b*batch : min(len(order), (b+1)*batch)]
}

// share is rank's part of a global batch: the rank-th of size consecutive,
// nearly equal parts (sizes differ by at most one; some may be empty when
// the batch has fewer samples than there are ranks).
func share(global []int, rank, size int) []int {
	return global[len(global)*rank/size : len(global)*(rank+1)/size]
}
