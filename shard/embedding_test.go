package shard

// The tests of Embedding and SparseAllReducer live in package shard (not
// shard_test) and prefix their helpers with emb, to stay clear of the FSDP
// tests' helpers.

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
)

var embCtx = context.Background()

// embNoLeak checks, after every other cleanup of the test (its
// communicators' included), that no goroutine is left.
func embNoLeak(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

func embLocal(t testing.TB, n int) []*collective.Comm {
	t.Helper()
	comms, err := collective.LocalConfig(n, collective.Config{Timeout: 30 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { testjob.CloseAll(comms) })
	return comms
}

// embInit gives row r small multiples of 1/8: exactly representable.
func embInit(row int, values []float32) {
	for j := range values {
		values[j] = float32((row*7+j*3)%17-8) / 8
	}
}

// embRef is the single-process table the sharded one must equal.
type embRef struct {
	rows, dim int
	values    []float32
	state     []float32
	opt       RowOptimizer
}

func newEmbRef(rows, dim int, opt RowOptimizer) *embRef {
	r := &embRef{rows: rows, dim: dim, values: make([]float32, rows*dim), opt: opt}
	for row := range rows {
		embInit(row, r.values[row*dim:(row+1)*dim])
	}
	if opt != nil {
		r.state = make([]float32, rows*dim*opt.StatePerValue())
	}
	return r
}

func (r *embRef) row(id int64) []float32 { return r.values[int(id)*r.dim : int(id+1)*r.dim] }

// backward adds every occurrence's gradient per row, in the order of the
// global batch (rank 0's ids, then rank 1's, ...), and updates each
// touched row once.
func (r *embRef) backward(ids [][]int64, grad func(rank, i int) []float32) {
	sums := map[int64][]float32{}
	for rank, list := range ids {
		for i, id := range list {
			s, ok := sums[id]
			if !ok {
				s = make([]float32, r.dim)
				sums[id] = s
			}
			for j, v := range grad(rank, i) {
				s[j] += v
			}
		}
	}
	spv := r.opt.StatePerValue()
	for id, g := range sums {
		r.opt.UpdateRow(r.row(id), g, r.state[int(id)*r.dim*spv:int(id+1)*r.dim*spv])
	}
}

// embBits compares float slices bit for bit.
func embBits(got, want []float32) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d values, want %d", len(got), len(want))
	}
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			return fmt.Errorf("[%d] = %v, want %v", i, got[i], want[i])
		}
	}
	return nil
}

// requireTableIs checks every rank's rows and state against the reference.
func requireTableIs(t *testing.T, tables []*Embedding, ref *embRef, what string) {
	t.Helper()
	spv := ref.opt.StatePerValue()
	covered := 0
	for r, e := range tables {
		lo, hi := e.Owned()
		require.Equal(t, covered, lo, "rank %d's rows follow the previous rank's", r)
		covered = hi
		require.NoError(t, embBits(e.Values(), ref.values[lo*ref.dim:hi*ref.dim]), "%s: rank %d's rows", what, r)
		require.NoError(t, embBits(e.State(), ref.state[lo*ref.dim*spv:hi*ref.dim*spv]), "%s: rank %d's state", what, r)
	}
	require.Equal(t, ref.rows, covered)
}

func newTables(t *testing.T, comms []*collective.Comm, rows, dim int, opt RowOptimizer) []*Embedding {
	t.Helper()
	tables := make([]*Embedding, len(comms))
	testjob.RequireAllOK(t, testjob.Each(len(comms), func(r int) error {
		var err error
		tables[r], err = NewEmbedding(embCtx, comms[r], rows, dim, EmbeddingOptions{Optimizer: opt, Init: embInit})
		return err
	}))
	return tables
}

// embBatch draws a rank's ids: some ranks' batches empty, duplicates
// likely (few distinct ids), ids skewed to one end so that some owners get
// no request from anyone in a step.
func embBatch(rng *rand.Rand, rows int) []int64 {
	n := rng.IntN(12)
	if rng.IntN(4) == 0 {
		n = 0
	}
	span := max(1, rows/(1+rng.IntN(3)))
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = int64(rng.IntN(span))
		if rng.IntN(2) == 0 {
			ids[i] = int64(rows - 1 - rng.IntN(span)) // the other end
		}
	}
	return ids
}

// embGrad is occurrence i's gradient on rank: small multiples of 1/4, so
// every sum is exact.
func embGrad(rank, i, dim int) []float32 {
	g := make([]float32, dim)
	for j := range g {
		g[j] = float32((rank*5+i*3+j)%9-4) / 4
	}
	return g
}

// Lookups return the rows of a single-process table, and Backward leaves
// every rank's rows and optimizer state bitwise those of the single-process
// table after the same updates, step after step: random ids with
// duplicates, empty batches, owners nobody asks, more ranks than rows.
func TestEmbeddingEqualsOneTableBitwise(t *testing.T) {
	embNoLeak(t)
	for _, tc := range []struct{ n, rows, dim int }{{1, 10, 3}, {2, 37, 5}, {3, 100, 4}, {4, 17, 1}, {5, 3, 2}, {8, 64, 7}} {
		for _, opt := range []RowOptimizer{&RowSGD{LR: 0.5}, &Adagrad{LR: 0.5, Eps: 1e-3, InitialAccumulator: 0.25}} {
			t.Run(fmt.Sprintf("n=%d/%dx%d/%T", tc.n, tc.rows, tc.dim, opt), func(t *testing.T) {
				comms := embLocal(t, tc.n)
				tables := newTables(t, comms, tc.rows, tc.dim, opt)
				ref := newEmbRef(tc.rows, tc.dim, opt)
				requireTableIs(t, tables, ref, "initial")
				rng := rand.New(rand.NewPCG(uint64(tc.n), uint64(tc.rows)))
				for step := range 6 {
					ids := make([][]int64, tc.n)
					for r := range ids {
						ids[r] = embBatch(rng, tc.rows)
					}
					outs := make([][]float32, tc.n)
					testjob.RequireAllOK(t, testjob.Each(tc.n, func(r int) error {
						outs[r] = make([]float32, len(ids[r])*tc.dim)
						return tables[r].Lookup(embCtx, ids[r], outs[r])
					}))
					for r := range ids {
						for i, id := range ids[r] {
							require.NoError(t, embBits(outs[r][i*tc.dim:(i+1)*tc.dim], ref.row(id)), "step %d rank %d ids[%d] = %d", step, r, i, id)
						}
					}
					testjob.RequireAllOK(t, testjob.Each(tc.n, func(r int) error {
						grads := make([]float32, 0, len(ids[r])*tc.dim)
						for i := range ids[r] {
							grads = append(grads, embGrad(r, i, tc.dim)...)
						}
						return tables[r].Backward(embCtx, ids[r], grads)
					}))
					ref.backward(ids, func(rank, i int) []float32 { return embGrad(rank, i, tc.dim) })
					requireTableIs(t, tables, ref, fmt.Sprintf("step %d", step))
				}
				// Training moved the table: the comparison is not vacuous.
				require.Error(t, embBits(ref.values, newEmbRef(tc.rows, tc.dim, opt).values))
			})
		}
	}
}

// embBags draws bags over ids: some empty, some of one id.
func embBags(rng *rand.Rand, ids []int64) []int {
	if len(ids) == 0 && rng.IntN(2) == 0 {
		return nil
	}
	offsets := []int{0}
	for at := 0; at < len(ids); {
		at = min(len(ids), at+rng.IntN(4))
		offsets = append(offsets, at)
	}
	return offsets
}

// LookupBags and BackwardBags equal a single-process EmbeddingBag, bitwise,
// for sum and mean pooling (the mean's gradients are multiples of the bag
// size, so the division is exact and any order of addition agrees).
func TestEmbeddingBagsEqualOneTableBitwise(t *testing.T) {
	embNoLeak(t)
	const n, rows, dim = 3, 29, 4
	for _, mode := range []Pooling{PoolSum, PoolMean} {
		t.Run(mode.String(), func(t *testing.T) {
			comms := embLocal(t, n)
			opt := NewAdagrad(0.25)
			tables := newTables(t, comms, rows, dim, opt)
			ref := newEmbRef(rows, dim, opt)
			rng := rand.New(rand.NewPCG(3, uint64(mode)))
			for step := range 5 {
				ids := make([][]int64, n)
				offsets := make([][]int, n)
				for r := range ids {
					ids[r] = embBatch(rng, rows)
					offsets[r] = embBags(rng, ids[r])
				}
				outs := make([][]float32, n)
				testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
					outs[r] = make([]float32, len(offsets[r])*dim)
					return tables[r].LookupBags(embCtx, ids[r], offsets[r], mode, outs[r])
				}))
				bagGrad := func(r, b int) []float32 {
					start, end := bag(ids[r], offsets[r], b)
					g := embGrad(r, b, dim)
					if mode == PoolMean {
						for j := range g {
							g[j] *= float32(max(1, end-start))
						}
					}
					return g
				}
				for r := range ids {
					for b := range offsets[r] {
						start, end := bag(ids[r], offsets[r], b)
						want := make([]float32, dim)
						for _, id := range ids[r][start:end] {
							for j, v := range ref.row(id) {
								want[j] += v
							}
						}
						if mode == PoolMean && end > start {
							for j := range want {
								want[j] /= float32(end - start)
							}
						}
						require.NoError(t, embBits(outs[r][b*dim:(b+1)*dim], want), "step %d rank %d bag %d", step, r, b)
					}
				}
				testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
					grads := make([]float32, 0, len(offsets[r])*dim)
					for b := range offsets[r] {
						grads = append(grads, bagGrad(r, b)...)
					}
					return tables[r].BackwardBags(embCtx, ids[r], offsets[r], mode, grads)
				}))
				// The reference: each id gets its bag's gradient (/ size).
				bagOf := func(r, i int) int {
					b, _ := slices.BinarySearch(offsets[r], i+1)
					return b - 1
				}
				ref.backward(ids, func(r, i int) []float32 {
					b := bagOf(r, i)
					start, end := bag(ids[r], offsets[r], b)
					g := bagGrad(r, b)
					if mode == PoolMean {
						for j := range g {
							g[j] /= float32(end - start)
						}
					}
					return g
				})
				requireTableIs(t, tables, ref, fmt.Sprintf("step %d", step))
			}
		})
	}
}

// An id outside the table (or a buffer of the wrong length) fails the
// calling rank's Lookup or Backward with an error naming it; the other
// ranks' calls complete with the right rows and updates, no rank hangs,
// and the bad rank's gradients are not applied.
func TestEmbeddingBadArgumentsFailOnlyTheCallingRank(t *testing.T) {
	embNoLeak(t)
	const n, rows, dim, culprit = 3, 20, 2, 1
	comms := embLocal(t, n)
	opt := &RowSGD{LR: 0.5}
	tables := newTables(t, comms, rows, dim, opt)
	ref := newEmbRef(rows, dim, opt)
	ids := [][]int64{{1, 2, 19}, {3, 20, 4}, {19, 0, 0}}
	for _, bad := range []struct {
		name string
		ids  []int64
		out  int
		says string
	}{
		{"too big", []int64{3, 20, 4}, 3 * dim, "ids[1] = 20 is not a row of the table (0 to 19)"},
		{"negative", []int64{-1}, dim, "ids[0] = -1"},
		{"short out", []int64{3, 4}, dim, "len(out) = 2 for 2 ids"},
	} {
		ids[culprit] = bad.ids
		outs := make([][]float32, n)
		errs := testjob.Each(n, func(r int) error {
			outs[r] = make([]float32, len(ids[r])*dim)
			if r == culprit {
				outs[r] = make([]float32, bad.out)
			}
			return tables[r].Lookup(embCtx, ids[r], outs[r])
		})
		for r, err := range errs {
			if r == culprit {
				require.ErrorIs(t, err, collective.ErrInvalid, bad.name)
				require.ErrorContains(t, err, bad.says)
				require.ErrorContains(t, err, "Embedding.Lookup on rank 1")
				require.Equal(t, make([]float32, bad.out), outs[r], "%s: nothing written", bad.name)
				continue
			}
			require.NoError(t, err, "%s: rank %d", bad.name, r)
			for i, id := range ids[r] {
				require.NoError(t, embBits(outs[r][i*dim:(i+1)*dim], ref.row(id)))
			}
		}
	}
	ids[culprit] = []int64{3, 20, 4}
	errs := testjob.Each(n, func(r int) error {
		grads := make([]float32, 0, len(ids[r])*dim)
		for i := range ids[r] {
			grads = append(grads, embGrad(r, i, dim)...)
		}
		return tables[r].Backward(embCtx, ids[r], grads)
	})
	require.ErrorIs(t, errs[culprit], collective.ErrInvalid)
	require.ErrorContains(t, errs[culprit], "ids[1] = 20")
	require.NoError(t, errs[0])
	require.NoError(t, errs[2])
	ref.backward([][]int64{ids[0], nil, ids[2]}, func(rank, i int) []float32 { return embGrad(rank, i, dim) })
	requireTableIs(t, tables, ref, "after a Backward with a bad id on rank 1")
	// The table still works on every rank.
	testjob.RequireAllOK(t, testjob.Each(n, func(r int) error { return tables[r].Lookup(embCtx, []int64{5}, make([]float32, dim)) }))
}

// Ranks calling different methods or different tables fail alike, and
// nothing changes.
func TestEmbeddingMismatchedCallsFailEveryRank(t *testing.T) {
	embNoLeak(t)
	const n, rows, dim = 3, 10, 2
	comms := embLocal(t, n)
	a := newTables(t, comms, rows, dim, &RowSGD{LR: 1})
	b := newTables(t, comms, rows, dim, &RowSGD{LR: 1})
	ref := newEmbRef(rows, dim, &RowSGD{LR: 1})
	errs := testjob.Each(n, func(r int) error {
		if r == 2 {
			return a[r].Backward(embCtx, []int64{1}, []float32{1, 1})
		}
		return a[r].Lookup(embCtx, []int64{1}, make([]float32, dim))
	})
	for r, err := range errs {
		require.ErrorIs(t, err, collective.ErrMismatch, "rank %d", r)
	}
	require.ErrorContains(t, errs[0], "rank 2 called Backward")
	require.ErrorContains(t, errs[2], "rank 0 called Lookup")
	requireTableIs(t, a, ref, "after the mismatch")
	errs = testjob.Each(n, func(r int) error {
		table := a[r]
		if r == 1 {
			table = b[r]
		}
		return table.Lookup(embCtx, []int64{1}, make([]float32, dim))
	})
	for r, err := range errs {
		require.ErrorIs(t, err, collective.ErrMismatch, "rank %d", r)
	}
	require.ErrorContains(t, errs[0], "rank 1 called another table")
	// Tables of other shapes are refused at construction, on every rank.
	errs = testjob.Each(n, func(r int) error {
		_, err := NewEmbedding(embCtx, comms[r], rows+r/2, dim, EmbeddingOptions{})
		return err
	})
	for r, err := range errs {
		require.ErrorIs(t, err, collective.ErrMismatch, "rank %d", r)
	}
	require.ErrorContains(t, errs[0], "rank 2 asked for 11×2, rank 0 for 10×2")
	errs = testjob.Each(n, func(r int) error {
		_, err := NewEmbedding(embCtx, comms[r], rows, dim-r, EmbeddingOptions{})
		return err
	})
	for r, err := range errs {
		require.Error(t, err, "rank %d", r)
	}
	require.ErrorIs(t, errs[2], collective.ErrInvalid)
	require.ErrorContains(t, errs[2], "a table of 10 rows of 0 values")
	// No optimizer: Backward is refused on the calling rank.
	c := newTables(t, comms, rows, dim, nil)
	errs = testjob.Each(n, func(r int) error { return c[r].Backward(embCtx, nil, nil) })
	for r, err := range errs {
		require.ErrorIs(t, err, collective.ErrInvalid, "rank %d", r)
		require.ErrorContains(t, err, "no optimizer")
	}
	// Bad bags.
	errs = testjob.Each(n, func(r int) error {
		switch r {
		case 0:
			return a[r].LookupBags(embCtx, []int64{1, 2}, []int{1}, PoolSum, make([]float32, dim))
		case 1:
			return a[r].LookupBags(embCtx, []int64{1, 2}, []int{0, 3}, PoolSum, make([]float32, 2*dim))
		}
		return a[r].LookupBags(embCtx, []int64{1, 2}, []int{0}, Pooling(9), make([]float32, dim))
	})
	require.ErrorContains(t, errs[0], "offsets[0] = 1")
	require.ErrorContains(t, errs[1], "offsets[1] = 3 after 0, with 2 ids")
	require.ErrorContains(t, errs[2], "pooling Pooling(9)")
}

// Lookup and Backward allocate nothing per step once their buffers have
// grown to the batch, beyond what the collectives they call allocate
// themselves (measured alongside: the same calls on the same sizes).
func TestEmbeddingStepAllocatesNothing(t *testing.T) {
	if embRace {
		t.Skip("the race detector allocates")
	}
	const n, rows, dim, batch = 3, 1000, 8, 64
	comms := embLocal(t, n)
	tables := newTables(t, comms, rows, dim, NewAdagrad(0.1))
	ids := make([][]int64, n)
	outs := make([][]float32, n)
	for r := range n {
		for i := range batch {
			ids[r] = append(ids[r], int64((i*37+r*11)%rows))
		}
		outs[r] = make([]float32, batch*dim)
	}
	step := func(r int) error {
		if err := tables[r].Lookup(embCtx, ids[r], outs[r]); err != nil {
			return err
		}
		return tables[r].Backward(embCtx, ids[r], outs[r])
	}
	// The collectives alone: per step, twice an AllToAll of the headers
	// and two AllToAllVs.
	hdr, hdrIn := make([][]int64, n), make([][]int64, n)
	counts := make([]int, n)
	for r := range n {
		hdr[r], hdrIn[r] = make([]int64, 3*n), make([]int64, 3*n)
	}
	for p := range n {
		counts[p] = batch / n
	}
	vcounts := make([]int, n)
	for p := range n {
		vcounts[p] = batch / n * dim
	}
	idsIn, valsIn := make([][]int64, n), make([][]float32, n)
	for r := range n {
		idsIn[r], valsIn[r] = make([]int64, batch/n*n), make([]float32, batch/n*n*dim)
	}
	collectives := func(r int) error {
		for range 2 {
			if err := collective.AllToAll(embCtx, comms[r], hdr[r], hdrIn[r]); err != nil {
				return err
			}
			if err := collective.AllToAllV(embCtx, comms[r], ids[r][:batch/n*n], counts, idsIn[r], counts); err != nil {
				return err
			}
			if err := collective.AllToAllV(embCtx, comms[r], outs[r][:batch/n*n*dim], vcounts, valsIn[r], vcounts); err != nil {
				return err
			}
		}
		return nil
	}
	allocs := func(step func(int) error) float64 { return testjob.NewDriver(t, n, step).AllocsPerStep(t) }
	base, got := allocs(collectives), allocs(step)
	t.Logf("allocations per step across %d ranks: %v (the collectives alone: %v)", n, got, base)
	assert.LessOrEqual(t, got, base)
}
