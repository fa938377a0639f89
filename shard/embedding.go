// Package shard splits a model's state across the ranks of a
// communicator. This file: Embedding, a lookup table split by rows.
package shard

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"unsafe"

	"github.com/ringo-ml/ringo/collective"
)

// Embedding is a table of Rows × Dim float32 values split by rows across
// the ranks of a communicator, as TorchRec's row-wise sharding: rank r of
// N owns the rows [r·Rows/N, (r+1)·Rows/N), their values and their
// optimizer state, and nothing else.
//
// Every method but the accessors is a collective call: every rank calls
// it, in the same order, each with its own ids (any number, zero
// included). A rank's bad arguments (an id outside the table, a buffer of
// the wrong length) make its own call return an error matching
// collective.ErrInvalid, after it has taken its part in the exchange with
// no ids of its own: the other ranks' calls complete normally and nothing
// is corrupted. Ranks that call different methods (Lookup against
// Backward) or different tables all get an error matching
// collective.ErrMismatch, and nothing changes.
//
// Contiguous rows per rank keep the exchange simple (sorted ids are
// already grouped by owner), but hot rows cluster: ids drawn with a skew
// towards low rows load rank 0 most. Hash the ids into the table first if
// that matters.
type Embedding struct {
	comm      *collective.Comm
	rows, dim int
	lo, hi    int   // this rank's rows
	id        int64 // the table's identity (rank 0's random draw)
	opt       RowOptimizer
	values    []float32 // (hi−lo) × dim
	state     []float32 // (hi−lo) × dim × opt.StatePerValue()
	stats     EmbeddingStats

	// Scratch, grown as needed and reused by every call.
	header, peerHeader     []int64 // per peer: table id, operation, count
	sendCounts, recvCounts []int   // ids to and from each peer
	sendRows, recvRows     []int   // the same in values (× dim)
	uniq                   []int64 // this call's distinct ids, sorted
	req                    []int64 // the ids peers ask of this rank, by peer in rank order
	rowsOut, rowsIn        []float32
	touched                []int64 // Backward: distinct rows of req, sorted
	acc                    []float32
}

// EmbeddingOptions configure an Embedding.
type EmbeddingOptions struct {
	// Optimizer is the sparse update rule Backward applies (required for
	// Backward; Lookup-only tables may leave it nil).
	Optimizer RowOptimizer
	// Init sets the initial values of one row (zeros if nil). Each rank
	// calls it for its own rows only, so it must depend on row alone: then
	// the table is the same whatever the number of ranks.
	Init func(row int, values []float32)
}

// EmbeddingStats count what an Embedding has moved so far: payload bytes
// (headers, ids, rows) this rank sent to and received from other ranks.
type EmbeddingStats struct {
	Calls                    int
	BytesSent, BytesReceived int64
}

// Pooling is how LookupBags combines a bag's rows.
type Pooling uint8

const (
	// PoolSum adds a bag's rows (torch's EmbeddingBag mode="sum").
	PoolSum Pooling = iota + 1
	// PoolMean averages them (mode="mean"); an empty bag gives zeros.
	PoolMean
)

func (p Pooling) String() string {
	switch p {
	case PoolSum:
		return "sum"
	case PoolMean:
		return "mean"
	}
	return fmt.Sprintf("Pooling(%d)", uint8(p))
}

// Operations, as the header names them.
const (
	embLookup int64 = iota + 1
	embBackward
)

var embOpNames = map[int64]string{embLookup: "Lookup", embBackward: "Backward"}

// NewEmbedding makes a table of rows × dim values split across comm's
// ranks. It is a collective call: every rank passes the same rows, dim and
// kind of optimizer (checked; every rank fails if not).
func NewEmbedding(ctx context.Context, comm *collective.Comm, rows, dim int, opts EmbeddingOptions) (*Embedding, error) {
	var bad error
	switch {
	case rows < 1 || dim < 1:
		bad = fmt.Errorf("%w: a table of %d rows of %d values", collective.ErrInvalid, rows, dim)
	case rows > (1<<62)/dim:
		bad = fmt.Errorf("%w: a table of %d rows of %d values is too big", collective.ErrInvalid, rows, dim)
	}
	if err := checkRowOptimizer(opts.Optimizer); bad == nil && err != nil {
		bad = fmt.Errorf("%w: %w", collective.ErrInvalid, err)
	}
	spv, kind := 0, int64(-1) // kind: state values per value, −1 without an optimizer
	if opts.Optimizer != nil {
		spv = opts.Optimizer.StatePerValue()
		kind = int64(spv)
	}
	n := comm.Size()
	mine := []int64{int64(rows), int64(dim), kind, 0, rand.Int64()}
	if bad != nil {
		mine[3] = 1
	}
	all := make([]int64, len(mine)*n)
	if err := collective.AllGather(ctx, comm, mine, all); err != nil {
		return nil, fmt.Errorf("shard: NewEmbedding: %w", err)
	}
	if bad != nil {
		return nil, fmt.Errorf("shard: NewEmbedding on rank %d: %w", comm.Rank(), bad)
	}
	for r := range n {
		e := all[r*len(mine) : (r+1)*len(mine)]
		switch {
		case e[3] != 0:
			return nil, fmt.Errorf("shard: NewEmbedding on rank %d: %w: rank %d's arguments are invalid (its own error says how)", comm.Rank(), collective.ErrInvalid, r)
		case e[0] != all[0] || e[1] != all[1]:
			return nil, fmt.Errorf("shard: NewEmbedding on rank %d: %w: rank %d asked for %d×%d, rank 0 for %d×%d", comm.Rank(), collective.ErrMismatch, r, e[0], e[1], all[0], all[1])
		case e[2] != all[2]:
			return nil, fmt.Errorf("shard: NewEmbedding on rank %d: %w: rank %d's optimizer keeps %d state values per value, rank 0's %d (−1: none)", comm.Rank(), collective.ErrMismatch, r, e[2], all[2])
		}
	}
	e := &Embedding{
		comm: comm, rows: rows, dim: dim, id: all[4], opt: opts.Optimizer,
		lo: rowsOf(rows, n, comm.Rank()), hi: rowsOf(rows, n, comm.Rank()+1),
		header: make([]int64, 3*n), peerHeader: make([]int64, 3*n),
		sendCounts: make([]int, n), recvCounts: make([]int, n),
		sendRows: make([]int, n), recvRows: make([]int, n),
	}
	e.values = make([]float32, (e.hi-e.lo)*dim)
	e.state = make([]float32, len(e.values)*spv)
	if opts.Init != nil {
		for r := e.lo; r < e.hi; r++ {
			opts.Init(r, e.row(r))
		}
	}
	return e, nil
}

// rowsOf is the first row rank r owns (r = n: the end).
func rowsOf(rows, n, r int) int { return rows * r / n }

// Rows is the number of rows; Dim the values per row.
func (e *Embedding) Rows() int { return e.rows }
func (e *Embedding) Dim() int  { return e.dim }

// Owned is the rows this rank holds, [lo, hi).
func (e *Embedding) Owned() (lo, hi int) { return e.lo, e.hi }

// Values is this rank's rows, row by row (a view: read it between calls).
func (e *Embedding) Values() []float32 { return e.values }

// State is the optimizer state of this rank's rows (a view), StatePerValue
// values per table value, in the same order.
func (e *Embedding) State() []float32 { return e.state }

// Stats tells what the table has moved so far.
func (e *Embedding) Stats() EmbeddingStats { return e.stats }

func (e *Embedding) row(r int) []float32 { return e.values[(r-e.lo)*e.dim : (r-e.lo+1)*e.dim] }

// Lookup writes into out (len(ids)·Dim values) the row of each id, in
// order. Duplicate ids are fetched once; each rank's rows come from their
// owner in one exchange (AllToAllV of the ids, then of the rows).
func (e *Embedding) Lookup(ctx context.Context, ids []int64, out []float32) error {
	bad := e.checkIDs(ids)
	if bad == nil && len(out) != len(ids)*e.dim {
		bad = fmt.Errorf("%w: len(out) = %d for %d ids of %d values", collective.ErrInvalid, len(out), len(ids), e.dim)
	}
	if err := e.fetch(ctx, ids, bad != nil); err != nil {
		return err
	}
	if bad != nil {
		return e.named("Lookup", bad)
	}
	d := e.dim
	for i, id := range ids {
		k, _ := slices.BinarySearch(e.uniq, id)
		copy(out[i*d:(i+1)*d], e.rowsIn[k*d:(k+1)*d])
	}
	return nil
}

// LookupBags is EmbeddingBag: bag b is ids[offsets[b]:offsets[b+1]] (the
// last bag runs to the end of ids; offsets[0] is 0), and out (len(offsets)
// ·Dim values) receives each bag's rows combined by mode, added in the
// bag's order.
func (e *Embedding) LookupBags(ctx context.Context, ids []int64, offsets []int, mode Pooling, out []float32) error {
	bad := e.checkIDs(ids)
	if bad == nil {
		bad = checkBags(ids, offsets, mode)
	}
	if bad == nil && len(out) != len(offsets)*e.dim {
		bad = fmt.Errorf("%w: len(out) = %d for %d bags of %d values", collective.ErrInvalid, len(out), len(offsets), e.dim)
	}
	if err := e.fetch(ctx, ids, bad != nil); err != nil {
		return err
	}
	if bad != nil {
		return e.named("LookupBags", bad)
	}
	d := e.dim
	for b := range offsets {
		start, end := bag(ids, offsets, b)
		dst := out[b*d : (b+1)*d]
		clear(dst)
		for _, id := range ids[start:end] {
			k, _ := slices.BinarySearch(e.uniq, id)
			for j, v := range e.rowsIn[k*d : (k+1)*d] {
				dst[j] += v
			}
		}
		if mode == PoolMean && end > start {
			n := float32(end - start)
			for j := range dst {
				dst[j] /= n
			}
		}
	}
	return nil
}

// Backward applies the optimizer to the rows of ids given the gradient of
// each (grads: len(ids)·Dim values). The gradients of an id's occurrences
// are added up on this rank (in order), sent to the row's owner, added
// there over the ranks (in rank order), and the owner updates each touched
// row once; no other row or state changes.
func (e *Embedding) Backward(ctx context.Context, ids []int64, grads []float32) error {
	bad := e.checkIDs(ids)
	if bad == nil && len(grads) != len(ids)*e.dim {
		bad = fmt.Errorf("%w: len(grads) = %d for %d ids of %d values", collective.ErrInvalid, len(grads), len(ids), e.dim)
	}
	return e.backward(ctx, "Backward", ids, nil, 0, grads, bad)
}

// BackwardBags is Backward for LookupBags: grads holds one gradient per
// bag (len(offsets)·Dim values), which each of the bag's ids receives
// (divided by the bag's size under PoolMean).
func (e *Embedding) BackwardBags(ctx context.Context, ids []int64, offsets []int, mode Pooling, grads []float32) error {
	bad := e.checkIDs(ids)
	if bad == nil {
		bad = checkBags(ids, offsets, mode)
	}
	if bad == nil && len(grads) != len(offsets)*e.dim {
		bad = fmt.Errorf("%w: len(grads) = %d for %d bags of %d values", collective.ErrInvalid, len(grads), len(offsets), e.dim)
	}
	return e.backward(ctx, "BackwardBags", ids, offsets, mode, grads, bad)
}

func (e *Embedding) backward(ctx context.Context, call string, ids []int64, offsets []int, mode Pooling, grads []float32, bad error) error {
	if bad == nil && e.opt == nil {
		bad = fmt.Errorf("%w: the table has no optimizer (EmbeddingOptions.Optimizer)", collective.ErrInvalid)
	}
	e.dedup(ids, bad != nil)
	d := e.dim
	// This rank's sum per distinct id, in the ids' order.
	e.rowsOut = grow(e.rowsOut, len(e.uniq)*d)
	clear(e.rowsOut)
	if bad == nil {
		add := func(i int, g []float32, n float32) {
			k, _ := slices.BinarySearch(e.uniq, ids[i])
			dst := e.rowsOut[k*d : (k+1)*d]
			for j, v := range g {
				if n != 0 {
					v /= n
				}
				dst[j] += v
			}
		}
		if offsets == nil {
			for i := range ids {
				add(i, grads[i*d:(i+1)*d], 0)
			}
		} else {
			for b := range offsets {
				start, end := bag(ids, offsets, b)
				n := float32(0)
				if mode == PoolMean {
					n = float32(end - start)
				}
				for i := start; i < end; i++ {
					add(i, grads[b*d:(b+1)*d], n)
				}
			}
		}
	}
	if err := e.exchangeIDs(ctx, embBackward); err != nil {
		return err
	}
	// The gradient rows go to their owners: the reverse of Lookup's rows.
	e.rowsIn = grow(e.rowsIn, len(e.req)*d)
	for p := range e.sendCounts {
		e.sendRows[p], e.recvRows[p] = e.sendCounts[p]*d, e.recvCounts[p]*d
	}
	if err := embAllToAllV(ctx, e, embBackward, e.rowsOut[:len(e.uniq)*d], e.sendRows, e.rowsIn, e.recvRows); err != nil {
		return err
	}
	// Sum each touched row over the ranks, in rank order (req is by
	// peer), then update it once.
	e.touched = append(e.touched[:0], e.req...)
	slices.Sort(e.touched)
	e.touched = slices.Compact(e.touched)
	e.acc = grow(e.acc, len(e.touched)*d)
	clear(e.acc)
	for i, id := range e.req {
		k, _ := slices.BinarySearch(e.touched, id)
		dst := e.acc[k*d : (k+1)*d]
		for j, v := range e.rowsIn[i*d : (i+1)*d] {
			dst[j] += v
		}
	}
	if e.opt == nil { // every rank has none (NewEmbedding checked), so nobody sent any
		return e.named(call, bad)
	}
	spv := e.opt.StatePerValue()
	for k, id := range e.touched {
		r := int(id) - e.lo
		e.opt.UpdateRow(e.values[r*d:(r+1)*d], e.acc[k*d:(k+1)*d], e.state[r*d*spv:(r+1)*d*spv])
	}
	if bad != nil {
		return e.named(call, bad)
	}
	return nil
}

// fetch brings this call's distinct rows (e.uniq) into e.rowsIn, serving
// the peers' requests of this rank's rows in the same exchange. skip takes
// part with no ids of its own.
func (e *Embedding) fetch(ctx context.Context, ids []int64, skip bool) error {
	e.dedup(ids, skip)
	if err := e.exchangeIDs(ctx, embLookup); err != nil {
		return err
	}
	d := e.dim
	e.rowsOut = grow(e.rowsOut, len(e.req)*d)
	for i, id := range e.req {
		copy(e.rowsOut[i*d:(i+1)*d], e.row(int(id)))
	}
	e.rowsIn = grow(e.rowsIn, len(e.uniq)*d)
	for p := range e.sendCounts {
		e.sendRows[p], e.recvRows[p] = e.recvCounts[p]*d, e.sendCounts[p]*d
	}
	return embAllToAllV(ctx, e, embLookup, e.rowsOut[:len(e.req)*d], e.sendRows, e.rowsIn[:len(e.uniq)*d], e.recvRows)
}

// dedup sets e.uniq to ids' distinct values, sorted (so grouped by owner),
// and e.sendCounts to how many each rank owns; none when skip.
func (e *Embedding) dedup(ids []int64, skip bool) {
	e.uniq = e.uniq[:0]
	if !skip {
		e.uniq = append(e.uniq, ids...)
		slices.Sort(e.uniq)
		e.uniq = slices.Compact(e.uniq)
	}
	n, i := e.comm.Size(), 0
	for p := range n {
		start := i
		for i < len(e.uniq) && e.uniq[i] < int64(rowsOf(e.rows, n, p+1)) {
			i++
		}
		e.sendCounts[p] = i - start
	}
}

// exchangeIDs tells every peer which operation this is and how many ids it
// asks of it, checks that every rank runs the same operation on the same
// table, and sends the ids (e.uniq) to their owners (into e.req).
func (e *Embedding) exchangeIDs(ctx context.Context, op int64) error {
	e.stats.Calls++
	for p, c := range e.sendCounts {
		e.header[3*p], e.header[3*p+1], e.header[3*p+2] = e.id, op, int64(c)
	}
	n := e.comm.Size()
	if err := collective.AllToAll(ctx, e.comm, e.header, e.peerHeader); err != nil {
		return e.named(embOpNames[op], err)
	}
	e.stats.BytesSent += int64(3 * 8 * (n - 1))
	e.stats.BytesReceived += int64(3 * 8 * (n - 1))
	total := 0
	for p := range n {
		id, theirs, c := e.peerHeader[3*p], e.peerHeader[3*p+1], e.peerHeader[3*p+2]
		switch {
		case id != e.id:
			return e.named(embOpNames[op], fmt.Errorf("%w: rank %d called another table (or another collective)", collective.ErrMismatch, p))
		case theirs != op:
			return e.named(embOpNames[op], fmt.Errorf("%w: rank %d called %s", collective.ErrMismatch, p, embOpNames[theirs]))
		case c < 0 || c > int64(e.hi-e.lo):
			return e.named(embOpNames[op], fmt.Errorf("%w: rank %d asks for %d of this rank's %d rows", collective.ErrMismatch, p, c, e.hi-e.lo))
		}
		e.recvCounts[p] = int(c)
		total += int(c)
	}
	e.req = grow(e.req, total)
	return embAllToAllV(ctx, e, op, e.uniq, e.sendCounts, e.req, e.recvCounts)
}

// embAllToAllV runs one exchange of e's and counts its bytes.
func embAllToAllV[T int64 | float32](ctx context.Context, e *Embedding, op int64, send []T, sendCounts []int, recv []T, recvCounts []int) error {
	if err := collective.AllToAllV(ctx, e.comm, send, sendCounts, recv, recvCounts); err != nil {
		return e.named(embOpNames[op], err)
	}
	self := e.comm.Rank()
	for p := range sendCounts {
		if p != self {
			e.stats.BytesSent += int64(sendCounts[p]) * int64(unsafe.Sizeof(send[0]))
			e.stats.BytesReceived += int64(recvCounts[p]) * int64(unsafe.Sizeof(send[0]))
		}
	}
	return nil
}

// checkIDs finds the first id outside the table.
func (e *Embedding) checkIDs(ids []int64) error {
	for i, id := range ids {
		if id < 0 || id >= int64(e.rows) {
			return fmt.Errorf("%w: ids[%d] = %d is not a row of the table (0 to %d)", collective.ErrInvalid, i, id, e.rows-1)
		}
	}
	return nil
}

// checkBags checks LookupBags' and BackwardBags' offsets and mode.
func checkBags(ids []int64, offsets []int, mode Pooling) error {
	if mode != PoolSum && mode != PoolMean {
		return fmt.Errorf("%w: pooling %v: want PoolSum or PoolMean", collective.ErrInvalid, mode)
	}
	if len(offsets) == 0 {
		if len(ids) > 0 {
			return fmt.Errorf("%w: %d ids in no bag (no offsets)", collective.ErrInvalid, len(ids))
		}
		return nil
	}
	if offsets[0] != 0 {
		return fmt.Errorf("%w: offsets[0] = %d: the first bag starts at 0", collective.ErrInvalid, offsets[0])
	}
	for b := 1; b < len(offsets); b++ {
		if offsets[b] < offsets[b-1] || offsets[b] > len(ids) {
			return fmt.Errorf("%w: offsets[%d] = %d after %d, with %d ids", collective.ErrInvalid, b, offsets[b], offsets[b-1], len(ids))
		}
	}
	return nil
}

// bag is bag b's range of ids.
func bag(ids []int64, offsets []int, b int) (int, int) {
	if b+1 < len(offsets) {
		return offsets[b], offsets[b+1]
	}
	return offsets[b], len(ids)
}

// named says which rank's call of which method failed.
func (e *Embedding) named(call string, err error) error {
	return fmt.Errorf("shard: Embedding.%s on rank %d: %w", call, e.comm.Rank(), err)
}

// grow returns s with length n, reusing its array when it is big enough.
func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n, n+n/4)
	}
	return s[:n]
}
