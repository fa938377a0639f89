// Package shard is fully sharded data parallelism (PyTorch FSDP, DeepSpeed
// ZeRO) for ringo: each rank keeps only its shard of the parameters,
// gradients and optimizer state.
package shard
