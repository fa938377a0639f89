package shard

import (
	"context"
	"fmt"
	"math/bits"
	"slices"

	"github.com/ringo-ml/ringo/collective"
)

// SparseMode is how a SparseAllReducer moves the gradients.
type SparseMode uint8

const (
	// SparseAuto chooses per call, by the bytes each path would move (see
	// SparseAllReducer).
	SparseAuto SparseMode = iota
	// SparseGather always gathers (index, row) pairs.
	SparseGather
	// SparseDense always reduces the whole table densely.
	SparseDense
)

func (m SparseMode) String() string {
	switch m {
	case SparseAuto:
		return "auto"
	case SparseGather:
		return "sparse"
	case SparseDense:
		return "dense"
	}
	return fmt.Sprintf("SparseMode(%d)", uint8(m))
}

// SparseAllReducerOptions configure a SparseAllReducer; every rank must
// pass the same (checked on every call).
type SparseAllReducerOptions struct {
	Mode SparseMode
	// Average divides the sum by the number of ranks, rounding as
	// collective.Avg does (the sum, then one division).
	Average bool
}

// SparseRows is a sparse gradient of a table: the rows IDs (sorted,
// distinct) and their values, row after row.
type SparseRows struct {
	IDs    []int64
	Values []float32
}

// SparseAllReducer sums the sparse gradients of a table replicated on every
// rank (each rank touched some rows; every rank ends with every touched
// row's sum), as torch's gloo backend does for sparse tensors. Two ways:
//
//   - sparse: every rank gathers every rank's (index, row) pairs
//     (AllGatherV of the indices, then of the rows) and adds them up itself,
//     in rank order;
//   - dense: every rank scatters its rows into a zeroed Rows × (Dim+1)
//     buffer (the extra column flags the rows it touched) and the buffer is
//     AllReduced.
//
// SparseAuto picks, on every call and identically on every rank (the ranks
// first AllGather how many rows each touched), the path that moves fewer
// bytes per rank. With n_k distinct rows on rank k, T = Σ n_k, N ranks:
//
//	sparse: max over k of max((N−1)·n_k, T−n_k) · (8 + 4·Dim)   (a rank sends its
//	        pairs to N−1 peers and receives everyone else's)
//	dense:  2(N−1)/N · Rows · (Dim+1) · 4                          (ring AllReduce)
//
// With every rank at density d (n_k = d·Rows) dense wins above
// d* = 2(Dim+1) / (N·(Dim+2)), about 2/N: SparseCrossover.
//
// The results are the same either way up to the order of additions: every
// rank ends with bitwise the same result, and with exactly representable
// gradients both paths give the same bits.
type SparseAllReducer struct {
	comm      *collective.Comm
	rows, dim int
	opts      SparseAllReducerOptions
	stats     SparseStats

	header, headers     []int64 // per rank: count, rows, dim, mode, average
	idCounts, valCounts []int
	uniq, allIDs        []int64
	local, allVals      []float32
	seen                []uint64 // a bit per row (sparse path)
	pos                 []int32  // row → its index in the result (sparse path)
	dense               []float32
	out                 SparseRows
}

// SparseStats count what a SparseAllReducer has done.
type SparseStats struct {
	SparseCalls, DenseCalls int
	// Bytes is the bytes this rank sent, by the formulas above (the
	// gathered pairs, or the ring's share), plus the count exchange.
	Bytes int64
	// LastDense says which path the last call took.
	LastDense bool
}

// NewSparseAllReducer prepares the sparse AllReduce of gradients of a
// Rows × Dim table on comm. It is not a collective call; its calls are.
func NewSparseAllReducer(comm *collective.Comm, rows, dim int, opts SparseAllReducerOptions) (*SparseAllReducer, error) {
	switch {
	case rows < 1 || dim < 1 || rows > (1<<62)/(dim+1) || rows > 1<<31-1:
		return nil, fmt.Errorf("shard: NewSparseAllReducer: %w: a table of %d rows of %d values", collective.ErrInvalid, rows, dim)
	case opts.Mode > SparseDense:
		return nil, fmt.Errorf("shard: NewSparseAllReducer: %w: mode %v", collective.ErrInvalid, opts.Mode)
	}
	n := comm.Size()
	return &SparseAllReducer{
		comm: comm, rows: rows, dim: dim, opts: opts,
		header: make([]int64, 5), headers: make([]int64, 5*n),
		idCounts: make([]int, n), valCounts: make([]int, n),
	}, nil
}

// SparseCrossover is the density (rows touched per rank / Rows, the same
// on every rank) above which the dense path moves fewer bytes.
func SparseCrossover(ranks, dim int) float64 {
	return 2 * float64(dim+1) / (float64(ranks) * float64(dim+2))
}

// Stats tells what the reducer has done so far.
func (s *SparseAllReducer) Stats() SparseStats { return s.stats }

// AllReduce sums every rank's gradient rows (ids, and grads: len(ids)·Dim
// values; duplicate ids are added) and returns the rows any rank touched
// with their sums, the same on every rank. The result is valid until the
// next call. It is a collective call. A rank with bad arguments (an id
// outside the table, grads of the wrong length) takes part with no rows
// and gets an error matching collective.ErrInvalid; the others get the
// sum of the rest.
func (s *SparseAllReducer) AllReduce(ctx context.Context, ids []int64, grads []float32) (SparseRows, error) {
	var bad error
	for i, id := range ids {
		if id < 0 || id >= int64(s.rows) {
			bad = fmt.Errorf("%w: ids[%d] = %d is not a row of the table (0 to %d)", collective.ErrInvalid, i, id, s.rows-1)
			break
		}
	}
	if bad == nil && len(grads) != len(ids)*s.dim {
		bad = fmt.Errorf("%w: len(grads) = %d for %d ids of %d values", collective.ErrInvalid, len(grads), len(ids), s.dim)
	}
	s.coalesce(ids, grads, bad != nil)
	n, d := s.comm.Size(), s.dim
	avg := int64(0)
	if s.opts.Average {
		avg = 1
	}
	copy(s.header, []int64{int64(len(s.uniq)), int64(s.rows), int64(d), int64(s.opts.Mode), avg})
	if err := collective.AllGather(ctx, s.comm, s.header, s.headers); err != nil {
		return SparseRows{}, s.named(err)
	}
	s.stats.Bytes += int64(len(s.header) * 8 * (n - 1))
	total := 0
	for r := range n {
		h := s.headers[5*r : 5*r+5]
		if h[1] != int64(s.rows) || h[2] != int64(d) || h[3] != int64(s.opts.Mode) || h[4] != avg {
			return SparseRows{}, s.named(fmt.Errorf("%w: rank %d reduces a %d×%d table (mode %v, average %v); this rank a %d×%d one (mode %v, average %v)",
				collective.ErrMismatch, r, h[1], h[2], SparseMode(h[3]), h[4] != 0, s.rows, d, s.opts.Mode, s.opts.Average))
		}
		s.idCounts[r], s.valCounts[r] = int(h[0]), int(h[0])*d
		total += int(h[0])
	}
	dense := s.chooseDense()
	var err error
	if dense {
		s.stats.DenseCalls++
		s.stats.Bytes += int64(2 * (n - 1) * s.rows * (d + 1) * 4 / n)
		err = s.reduceDense(ctx)
	} else {
		s.stats.SparseCalls++
		s.stats.Bytes += int64((n - 1) * len(s.uniq) * (8 + 4*d))
		err = s.reduceSparse(ctx, total)
	}
	s.stats.LastDense = dense
	if err != nil {
		return SparseRows{}, s.named(err)
	}
	if bad != nil {
		return SparseRows{}, s.named(bad)
	}
	return s.out, nil
}

// chooseDense applies the byte counts of the type's documentation to the
// counts every rank now has.
func (s *SparseAllReducer) chooseDense() bool {
	switch s.opts.Mode {
	case SparseGather:
		return false
	case SparseDense:
		return true
	}
	n := int64(s.comm.Size())
	total := int64(0)
	for _, c := range s.idCounts {
		total += int64(c)
	}
	worst := int64(0)
	for _, c := range s.idCounts {
		worst = max(worst, (n-1)*int64(c), total-int64(c))
	}
	sparse := worst * (8 + 4*int64(s.dim))
	dense := 2 * (n - 1) * int64(s.rows) * (int64(s.dim) + 1) * 4 / n
	return dense < sparse
}

// coalesce sets s.uniq and s.local to this rank's distinct ids, sorted,
// and their summed rows (added in the order of ids); nothing when skip.
func (s *SparseAllReducer) coalesce(ids []int64, grads []float32, skip bool) {
	s.uniq = s.uniq[:0]
	if !skip {
		s.uniq = append(s.uniq, ids...)
		slices.Sort(s.uniq)
		s.uniq = slices.Compact(s.uniq)
	}
	d := s.dim
	s.local = grow(s.local, len(s.uniq)*d)
	clear(s.local)
	if skip {
		return
	}
	for i, id := range ids {
		k, _ := slices.BinarySearch(s.uniq, id)
		dst := s.local[k*d : (k+1)*d]
		for j, v := range grads[i*d : (i+1)*d] {
			dst[j] += v
		}
	}
}

// reduceSparse gathers every rank's pairs and adds them up, in rank order.
func (s *SparseAllReducer) reduceSparse(ctx context.Context, total int) error {
	d := s.dim
	s.allIDs = grow(s.allIDs, total)
	s.allVals = grow(s.allVals, total*d)
	if err := collective.AllGatherV(ctx, s.comm, s.uniq, s.idCounts, s.allIDs); err != nil {
		return err
	}
	if err := collective.AllGatherV(ctx, s.comm, s.local, s.valCounts, s.allVals); err != nil {
		return err
	}
	// The touched rows, in order, from a bit per row: O(T + Rows/64).
	words := (s.rows + 63) / 64
	s.seen = grow(s.seen, words)
	clear(s.seen)
	for _, id := range s.allIDs {
		s.seen[id/64] |= 1 << (id % 64)
	}
	if len(s.pos) < s.rows {
		s.pos = make([]int32, s.rows)
	}
	s.out.IDs = s.out.IDs[:0]
	for w, bitsLeft := range s.seen {
		for bitsLeft != 0 {
			b := bits.TrailingZeros64(bitsLeft)
			bitsLeft &= bitsLeft - 1
			id := int64(w*64 + b)
			s.pos[id] = int32(len(s.out.IDs))
			s.out.IDs = append(s.out.IDs, id)
		}
	}
	s.out.Values = grow(s.out.Values, len(s.out.IDs)*d)
	clear(s.out.Values)
	for i, id := range s.allIDs {
		k := int(s.pos[id])
		dst := s.out.Values[k*d : (k+1)*d]
		for j, v := range s.allVals[i*d : (i+1)*d] {
			dst[j] += v
		}
	}
	if s.opts.Average {
		n := float32(s.comm.Size())
		for i := range s.out.Values {
			s.out.Values[i] /= n
		}
	}
	return nil
}

// reduceDense AllReduces the whole table, a flag column marking the rows
// some rank touched.
func (s *SparseAllReducer) reduceDense(ctx context.Context) error {
	d, w := s.dim, s.dim+1
	if s.dense == nil {
		s.dense = make([]float32, s.rows*w)
	} else {
		clear(s.dense)
	}
	for k, id := range s.uniq {
		copy(s.dense[int(id)*w:int(id)*w+d], s.local[k*d:(k+1)*d])
		s.dense[int(id)*w+d] = 1
	}
	op := collective.Sum
	if s.opts.Average {
		op = collective.Avg
	}
	if err := collective.AllReduce(ctx, s.comm, s.dense, op); err != nil {
		return err
	}
	s.out.IDs = s.out.IDs[:0]
	for r := range s.rows {
		if s.dense[r*w+d] != 0 {
			s.out.IDs = append(s.out.IDs, int64(r))
		}
	}
	s.out.Values = grow(s.out.Values, len(s.out.IDs)*d)
	for k, id := range s.out.IDs {
		copy(s.out.Values[k*d:(k+1)*d], s.dense[int(id)*w:int(id)*w+d])
	}
	return nil
}

func (s *SparseAllReducer) named(err error) error {
	return fmt.Errorf("shard: SparseAllReducer.AllReduce on rank %d: %w", s.comm.Rank(), err)
}
