package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"
	"unsafe"

	"github.com/ringo-ml/ringo/collective"
)

// row is one size of a sweep. Every rank ends a sweep with the same rows.
type row struct {
	Collective string  `json:"collective"`
	Bytes      int64   `json:"bytes"` // the whole buffer, as nccl-tests counts it
	Count      int     `json:"count"` // elements in Bytes
	Type       string  `json:"type"`
	Op         string  `json:"op"` // reduction, "" for allgather and broadcast
	Root       int     `json:"root"`
	TimeUS     float64 `json:"time_us"` // per call: median over samples of the slowest rank
	MinUS      float64 `json:"min_us"`
	P90US      float64 `json:"p90_us"`
	AlgBW      float64 `json:"algbw"` // GB/s (1e9 B/s)
	BusBW      float64 `json:"busbw"`
	Wrong      int64   `json:"wrong"` // -1: not checked
	Samples    int     `json:"samples"`
	Inner      int     `json:"inner"` // calls per sample
}

// busFactor is nccl-tests' ratio of bus bandwidth to algorithm bandwidth:
// the fraction of the buffer each rank's link carries, relative to one copy.
func busFactor(collective string, n int) float64 {
	if n < 1 {
		return 0
	}
	switch collective {
	case "allreduce":
		return 2 * float64(n-1) / float64(n)
	case "reducescatter", "allgather", "alltoall", "gather", "scatter":
		return float64(n-1) / float64(n)
	}
	return 1 // broadcast, reduce
}

// sweep runs o's sweep on this rank. progress, if not nil, is told before
// each size (sizes done so far, their number, the size about to run) and
// once at the end. Every rank must call it with the same options.
func sweep(ctx context.Context, c *collective.Comm, o *options, progress func(done, total int, bytes int64)) ([]row, error) {
	switch o.dtype {
	case "int8":
		return sweepOf[int8](ctx, c, o, progress)
	case "uint8":
		return sweepOf[uint8](ctx, c, o, progress)
	case "int32":
		return sweepOf[int32](ctx, c, o, progress)
	case "uint32":
		return sweepOf[uint32](ctx, c, o, progress)
	case "int64":
		return sweepOf[int64](ctx, c, o, progress)
	case "uint64":
		return sweepOf[uint64](ctx, c, o, progress)
	case "float32":
		return sweepOf[float32](ctx, c, o, progress)
	case "float64":
		return sweepOf[float64](ctx, c, o, progress)
	}
	return nil, fmt.Errorf("unknown type %q", o.dtype)
}

func sweepOf[T collective.Elem](ctx context.Context, c *collective.Comm, o *options, progress func(int, int, int64)) ([]row, error) {
	sizes := o.sizeList()
	rows := make([]row, 0, len(sizes))
	for i, bytes := range sizes {
		if progress != nil {
			progress(i, len(sizes), bytes)
		}
		r, err := runSize[T](ctx, c, o, bytes)
		if err != nil {
			return rows, fmt.Errorf("%s %s %d bytes: %w", o.collective, o.dtype, bytes, err)
		}
		rows = append(rows, r)
	}
	if progress != nil {
		progress(len(sizes), len(sizes), 0)
	}
	return rows, nil
}

// bench is one size of one collective on this rank: its buffers and calls.
type bench[T collective.Elem] struct {
	c          *collective.Comm
	o          *options
	op         collective.Op
	count      int // elements of the whole buffer
	send, recv []T // allreduce and broadcast use send only
}

func elemCount[T collective.Elem](collective string, bytes int64, n int) int {
	var zero T
	count := int(bytes / int64(unsafe.Sizeof(zero)))
	switch collective {
	case "reducescatter", "allgather", "alltoall", "gather", "scatter":
		count -= count % n // whole blocks of count/n per rank
		return max(count, n)
	}
	return max(count, 1)
}

func newBench[T collective.Elem](c *collective.Comm, o *options, bytes int64) *bench[T] {
	b := &bench[T]{c: c, o: o, op: parseOp(o.op), count: elemCount[T](o.collective, bytes, c.Size())}
	n := c.Size()
	switch o.collective {
	case "allreduce", "broadcast":
		b.send = make([]T, b.count)
	case "reducescatter":
		b.send, b.recv = make([]T, b.count), make([]T, b.count/n)
	case "allgather", "gather":
		b.send, b.recv = make([]T, b.count/n), make([]T, b.count)
	case "reduce":
		b.send, b.recv = make([]T, b.count), make([]T, b.count)
	case "alltoall":
		b.send, b.recv = make([]T, b.count), make([]T, b.count)
	case "scatter":
		b.send, b.recv = make([]T, b.count), make([]T, b.count/n)
	}
	return b
}

func parseOp(s string) collective.Op {
	switch s {
	case "prod":
		return collective.Prod
	case "min":
		return collective.Min
	case "max":
		return collective.Max
	case "avg":
		return collective.Avg
	}
	return collective.Sum
}

func (b *bench[T]) call(ctx context.Context) error {
	switch b.o.collective {
	case "allreduce":
		return collective.AllReduce(ctx, b.c, b.send, b.op)
	case "reducescatter":
		return collective.ReduceScatter(ctx, b.c, b.send, b.recv, b.op)
	case "allgather":
		return collective.AllGather(ctx, b.c, b.send, b.recv)
	case "broadcast":
		return collective.Broadcast(ctx, b.c, b.send, b.o.root)
	case "reduce":
		return collective.Reduce(ctx, b.c, b.send, b.recv, b.op, b.o.root)
	case "alltoall":
		return collective.AllToAll(ctx, b.c, b.send, b.recv)
	case "gather":
		return collective.Gather(ctx, b.c, b.send, b.recv, b.o.root)
	case "scatter":
		return collective.Scatter(ctx, b.c, b.send, b.recv, b.o.root)
	}
	return fmt.Errorf("unknown collective %q", b.o.collective)
}

func runSize[T collective.Elem](ctx context.Context, c *collective.Comm, o *options, bytes int64) (row, error) {
	b := newBench[T](c, o, bytes)
	var zero T
	r := row{
		Collective: o.collective, Count: b.count, Type: o.dtype, Root: -1, Wrong: -1,
		Bytes: int64(b.count) * int64(unsafe.Sizeof(zero)),
	}
	switch o.collective {
	case "allreduce", "reducescatter":
		r.Op = o.op
	case "reduce":
		r.Op, r.Root = o.op, o.root
	case "broadcast", "gather", "scatter":
		r.Root = o.root
	}

	if o.check != 0 {
		b.fill()
		if err := b.call(ctx); err != nil {
			return r, err
		}
		wrong := []int64{b.verify()}
		if err := collective.AllReduce(ctx, c, wrong, collective.Sum); err != nil {
			return r, err
		}
		r.Wrong = wrong[0]
		c.CompressionStats() // the check's values are not the timed ones: reset
	}
	b.steady()

	// Warm-up, which also calibrates: every rank takes the slowest rank's
	// time per call, so every rank makes the same number of calls.
	warm := max(1, o.warmup)
	t0 := time.Now()
	for range warm {
		if err := b.call(ctx); err != nil {
			return r, err
		}
	}
	per := []float64{time.Since(t0).Seconds() / float64(warm)}
	if err := collective.AllReduce(ctx, c, per, collective.Max); err != nil {
		return r, err
	}
	r.Inner = 1
	if per[0] > 0 && o.minSample > 0 {
		r.Inner = int(min(10000, max(1, math.Ceil(o.minSample.Seconds()/per[0]))))
	}
	r.Samples = o.iters
	if o.budget > 0 {
		r.Samples = int(min(500, max(10, o.budget.Seconds()/(per[0]*float64(r.Inner)))))
	}

	times := make([]float64, r.Samples)
	for s := range times {
		if err := collective.Barrier(ctx, c); err != nil {
			return r, err
		}
		t0 := time.Now()
		for range r.Inner {
			if err := b.call(ctx); err != nil {
				return r, err
			}
		}
		times[s] = time.Since(t0).Seconds() / float64(r.Inner)
	}
	// A sample takes as long as its slowest rank (reduced outside the timing).
	if err := collective.AllReduce(ctx, c, times, collective.Max); err != nil {
		return r, err
	}
	slices.Sort(times)
	med := times[len(times)/2]
	if len(times)%2 == 0 {
		med = (times[len(times)/2-1] + times[len(times)/2]) / 2
	}
	r.TimeUS = med * 1e6
	r.MinUS = times[0] * 1e6
	r.P90US = times[min(len(times)-1, int(math.Ceil(0.9*float64(len(times))))-1)] * 1e6
	if med > 0 {
		r.AlgBW = float64(r.Bytes) / med / 1e9
		r.BusBW = r.AlgBW * busFactor(o.collective, c.Size())
	}
	return r, nil
}
