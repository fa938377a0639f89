// Package nn is a small neural-network library for ringo's examples and
// tests: fully connected layers, ReLU, softmax cross-entropy, an MLP builder
// and elementwise optimizers (SGD with momentum, Adam, AdamW). It is not a
// public API; it exists so that the training packages (data parallel,
// sharded, pipeline, parameter-server, federated) and their examples share
// one model whose arithmetic they can reason about.
//
// Conventions every layer follows:
//
//   - Data is row-major: a batch of b rows of f features is a []float32 of
//     length b·f. Layers keep buffers sized for the largest batch seen, so
//     after the first step of a given size nothing is allocated.
//   - Parameters are *parallel.Param. Layers read Data and Grad through the
//     Param at every call and never keep the slices, because training APIs
//     re-point them (DataParallel moves Grad into its buckets; a sharded
//     engine may move Data).
//   - Backward ADDS into Grad (so several micro-batches accumulate) and calls
//     a ready hook for each parameter as soon as its gradient is final, last
//     layer first, before computing the gradient of the layer's input, so
//     that communication of that gradient overlaps the rest of backward.
//     ZeroGrad clears the gradients between steps. With parallel.DataParallel,
//     call ZeroGrad before every backward, micro-batches included:
//     DataParallel keeps the running sum of no-sync micro-batches itself
//     (its convention is that backward writes a fresh gradient).
//
// Loss scaling under data parallelism: the loss takes a scale factor s and
// produces s·∂(Σ losses)/∂logits. In one process with batch B, s = 1/B gives
// the gradient of the batch mean. When a global batch of B samples is split
// over N ranks into local batches b_r that need not be equal (the last batch
// of an epoch rarely divides evenly) and gradients are averaged over ranks,
// every rank must use s = N/B (GlobalMeanScale): then
//
//	Avg_r( N/B · Σ_{i∈r} g_i ) = 1/B · Σ_i g_i,
//
// the one-process gradient. Using the local mean (s = 1/b_r) would weight
// the samples of a smaller local batch more than the others.
package nn
