package shard

// Memory is what an FSDP holds on this rank, in bytes, by kind: the
// allocation accounting of the package documentation's memory table.
type Memory struct {
	// Params: the parameters kept between uses: this rank's shards under
	// FullShard and Hybrid, full copies otherwise.
	Params int64
	// Grads: the gradients kept between steps: this rank's reduced shards
	// (ShardGradOp, FullShard, Hybrid) or full gradients (ShardOptimizer,
	// NoShard).
	Grads int64
	// OptimizerState: this rank's optimizer state (zero before the first
	// Step allocates it).
	OptimizerState int64
	// Buffers: the bounded transient buffers: under FullShard and Hybrid
	// MaxGathered gather buffers, each a unit's full parameters and full
	// gradient (8 bytes per element of the largest unit); under ShardGradOp
	// its two full-gradient buffers.
	Buffers int64
	// Accumulation: the full gradients kept for accumulation without
	// synchronisation (SetGradSync(false)) under the strategies that
	// otherwise keep only gradient shards; zero until first needed.
	Accumulation int64
}

// Total is the sum of every kind.
func (m Memory) Total() int64 {
	return m.Params + m.Grads + m.OptimizerState + m.Buffers + m.Accumulation
}

// Memory reports the bytes this rank holds, counted from the buffers
// themselves.
func (fs *FSDP) Memory() Memory {
	var m Memory
	bytes := func(b []float32) int64 { return 4 * int64(cap(b)) }
	for _, un := range fs.units {
		if un.full != nil {
			m.Params += bytes(un.full)
		} else {
			m.Params += bytes(un.data)
		}
		if un.fullGrad != nil {
			m.Grads += bytes(un.fullGrad)
		} else {
			m.Grads += bytes(un.gradShard)
		}
		m.OptimizerState += bytes(un.state)
		m.Accumulation += bytes(un.accum)
	}
	for _, sl := range fs.slots {
		m.Buffers += bytes(sl.params) + bytes(sl.grads)
	}
	for _, g := range fs.gradSlots {
		m.Buffers += bytes(g.grads)
	}
	return m
}
