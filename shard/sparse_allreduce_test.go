package shard

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/testjob"
)

// sparseRef is the exact sum (float64) of every rank's rows by id.
func sparseRef(ids [][]int64, grads [][]float32, dim int) map[int64][]float64 {
	sums := map[int64][]float64{}
	for r := range ids {
		for i, id := range ids[r] {
			s, ok := sums[id]
			if !ok {
				s = make([]float64, dim)
				sums[id] = s
			}
			for j := range dim {
				s[j] += float64(grads[r][i*dim+j])
			}
		}
	}
	return sums
}

// embDensityBatch draws about density·rows ids (with duplicates) and
// their gradients, small multiples of 1/4.
func embDensityBatch(rng *rand.Rand, rows, dim int, density float64) ([]int64, []float32) {
	n := int(density * float64(rows))
	if rng.IntN(5) == 0 {
		n = 0
	}
	ids := make([]int64, n)
	grads := make([]float32, n*dim)
	for i := range ids {
		ids[i] = int64(rng.IntN(rows))
		for j := range dim {
			grads[i*dim+j] = float32(rng.IntN(17)-8) / 4
		}
	}
	return ids, grads
}

// Every mode gives every rank bitwise the same result, which is the exact
// sum of every rank's rows (exactly representable data), or that sum
// divided by N with one rounding (Average), over the union of the touched
// rows: 1 to 5 ranks, empty batches, duplicates within and across ranks.
func TestSparseAllReduceEqualsTheExactSum(t *testing.T) {
	embNoLeak(t)
	const rows, dim = 50, 3
	for n := 1; n <= 5; n++ {
		for _, mode := range []SparseMode{SparseAuto, SparseGather, SparseDense} {
			for _, avg := range []bool{false, true} {
				t.Run(fmt.Sprintf("n=%d/%v/avg=%v", n, mode, avg), func(t *testing.T) {
					comms := embLocal(t, n)
					reducers := make([]*SparseAllReducer, n)
					for r := range n {
						var err error
						reducers[r], err = NewSparseAllReducer(comms[r], rows, dim, SparseAllReducerOptions{Mode: mode, Average: avg})
						require.NoError(t, err)
					}
					rng := rand.New(rand.NewPCG(uint64(n), uint64(mode)))
					for _, density := range []float64{0.02, 0.2, 0.9} {
						ids, grads := make([][]int64, n), make([][]float32, n)
						for r := range n {
							ids[r], grads[r] = embDensityBatch(rng, rows, dim, density)
						}
						results := make([]SparseRows, n)
						testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
							res, err := reducers[r].AllReduce(embCtx, ids[r], grads[r])
							results[r] = SparseRows{IDs: append([]int64{}, res.IDs...), Values: append([]float32{}, res.Values...)}
							return err
						}))
						ref := sparseRef(ids, grads, dim)
						wantIDs := make([]int64, 0, len(ref))
						for id := range ref {
							wantIDs = append(wantIDs, id)
						}
						slices.Sort(wantIDs)
						want := make([]float32, 0, len(wantIDs)*dim)
						for _, id := range wantIDs {
							for _, v := range ref[id] {
								f := float32(v) // exact
								if avg {
									f /= float32(n)
								}
								want = append(want, f)
							}
						}
						for r, res := range results {
							require.Equal(t, wantIDs, res.IDs, "density %v rank %d", density, r)
							require.NoError(t, embBits(res.Values, want), "density %v rank %d", density, r)
						}
					}
				})
			}
		}
	}
}

// SparseAuto takes the sparse path below the crossover density and the
// dense one above it, the same on every rank.
func TestSparseAutoChoosesByBytes(t *testing.T) {
	embNoLeak(t)
	const n, rows, dim = 4, 2000, 16
	crossover := SparseCrossover(n, dim)
	assert.InDelta(t, 2*17.0/(4*18.0), crossover, 1e-12)
	comms := embLocal(t, n)
	reducers := make([]*SparseAllReducer, n)
	for r := range n {
		var err error
		reducers[r], err = NewSparseAllReducer(comms[r], rows, dim, SparseAllReducerOptions{})
		require.NoError(t, err)
	}
	for _, tc := range []struct {
		density float64
		dense   bool
	}{{0.001, false}, {0.1, false}, {crossover * 0.9, false}, {crossover * 1.1, true}, {0.9, true}} {
		testjob.RequireAllOK(t, testjob.Each(n, func(r int) error {
			// Distinct ids, density·rows on every rank.
			k := int(tc.density * rows)
			ids := make([]int64, k)
			for i := range ids {
				ids[i] = int64((i*7 + r) % rows)
			}
			slices.Sort(ids)
			ids = slices.Compact(ids)
			_, err := reducers[r].AllReduce(embCtx, ids, make([]float32, len(ids)*dim))
			return err
		}))
		for r := range n {
			assert.Equal(t, tc.dense, reducers[r].Stats().LastDense, "density %.4f rank %d", tc.density, r)
		}
	}
	st := reducers[0].Stats()
	assert.Equal(t, 3, st.SparseCalls)
	assert.Equal(t, 2, st.DenseCalls)
}

// A rank with a bad id gets an error and contributes nothing; the others
// get the sum of the rest. Ranks with other modes or shapes all fail.
func TestSparseAllReduceBadArguments(t *testing.T) {
	embNoLeak(t)
	const n, rows, dim = 3, 10, 2
	comms := embLocal(t, n)
	reducers := make([]*SparseAllReducer, n)
	for r := range n {
		var err error
		reducers[r], err = NewSparseAllReducer(comms[r], rows, dim, SparseAllReducerOptions{Mode: SparseGather})
		require.NoError(t, err)
	}
	ids := [][]int64{{1, 2}, {3, 10}, {2}}
	grads := [][]float32{{1, 1, 2, 2}, {3, 3, 4, 4}, {5, 5}}
	results := make([]SparseRows, n)
	errs := testjob.Each(n, func(r int) error {
		var err error
		results[r], err = reducers[r].AllReduce(embCtx, ids[r], grads[r])
		return err
	})
	require.ErrorIs(t, errs[1], collective.ErrInvalid)
	require.ErrorContains(t, errs[1], "ids[1] = 10 is not a row of the table (0 to 9)")
	for _, r := range []int{0, 2} {
		require.NoError(t, errs[r])
		require.Equal(t, []int64{1, 2}, results[r].IDs)
		require.Equal(t, []float32{1, 1, 7, 7}, results[r].Values)
	}
	other, err := NewSparseAllReducer(comms[2], rows, dim, SparseAllReducerOptions{Mode: SparseDense})
	require.NoError(t, err)
	errs = testjob.Each(n, func(r int) error {
		red := reducers[r]
		if r == 2 {
			red = other
		}
		_, err := red.AllReduce(embCtx, nil, nil)
		return err
	})
	for r, err := range errs {
		require.ErrorIs(t, err, collective.ErrMismatch, "rank %d", r)
	}
	require.ErrorContains(t, errs[0], "rank 2 reduces a 10×2 table (mode dense, average false)")
	_, err = NewSparseAllReducer(comms[0], 0, dim, SparseAllReducerOptions{})
	require.ErrorIs(t, err, collective.ErrInvalid)
}

// Both paths allocate nothing per call beyond what their collectives do.
func TestSparseAllReduceAllocatesNothing(t *testing.T) {
	if embRace {
		t.Skip("the race detector allocates")
	}
	const n, rows, dim = 3, 500, 4
	for _, mode := range []SparseMode{SparseGather, SparseDense} {
		t.Run(mode.String(), func(t *testing.T) {
			comms := embLocal(t, n)
			ids, grads := make([][]int64, n), make([][]float32, n)
			reducers := make([]*SparseAllReducer, n)
			for r := range n {
				for i := range 40 {
					ids[r] = append(ids[r], int64((i*13+r)%rows))
				}
				grads[r] = make([]float32, 40*dim)
				var err error
				reducers[r], err = NewSparseAllReducer(comms[r], rows, dim, SparseAllReducerOptions{Mode: mode})
				require.NoError(t, err)
			}
			hdr, hdrs := make([][]int64, n), make([][]int64, n)
			counts, vcounts := make([]int, n), make([]int, n)
			for r := range n {
				hdr[r], hdrs[r] = make([]int64, 5), make([]int64, 5*n)
				counts[r], vcounts[r] = 40, 40*dim
			}
			allIDs, allVals, dense := make([][]int64, n), make([][]float32, n), make([][]float32, n)
			for r := range n {
				allIDs[r], allVals[r], dense[r] = make([]int64, 40*n), make([]float32, 40*n*dim), make([]float32, rows*(dim+1))
			}
			collectives := func(r int) error {
				if err := collective.AllGather(embCtx, comms[r], hdr[r], hdrs[r]); err != nil {
					return err
				}
				if mode == SparseDense {
					return collective.AllReduce(embCtx, comms[r], dense[r], collective.Sum)
				}
				if err := collective.AllGatherV(embCtx, comms[r], ids[r], counts, allIDs[r]); err != nil {
					return err
				}
				return collective.AllGatherV(embCtx, comms[r], grads[r], vcounts, allVals[r])
			}
			call := func(r int) error {
				_, err := reducers[r].AllReduce(embCtx, ids[r], grads[r])
				return err
			}
			allocs := func(step func(int) error) float64 { return testjob.NewDriver(t, n, step).AllocsPerStep(t) }
			base, got := allocs(collectives), allocs(call)
			t.Logf("allocations per call across %d ranks: %v (the collectives alone: %v)", n, got, base)
			assert.LessOrEqual(t, got, base)
		})
	}
}

// BenchmarkSparseAllReduce: 4 ranks in this process (memory, not a
// network: the CPU's costs), a 100000 × 64 table, each mode at each
// density. The netns testbed's numbers (bench/ps/run.sh) are the network's.
func BenchmarkSparseAllReduce(b *testing.B) {
	const n, rows, dim = 4, 100000, 64
	for _, density := range []float64{0.001, 0.01, 0.1, 0.5} {
		for _, mode := range []SparseMode{SparseGather, SparseDense, SparseAuto} {
			b.Run(fmt.Sprintf("density=%g/%v", density, mode), func(b *testing.B) {
				comms := embLocal(b, n)
				reducers := make([]*SparseAllReducer, n)
				ids, grads := make([][]int64, n), make([][]float32, n)
				for r := range n {
					var err error
					reducers[r], err = NewSparseAllReducer(comms[r], rows, dim, SparseAllReducerOptions{Mode: mode})
					require.NoError(b, err)
					rng := rand.New(rand.NewPCG(uint64(r), 1))
					for _, id := range rng.Perm(rows)[:int(density*rows)] {
						ids[r] = append(ids[r], int64(id))
					}
					grads[r] = make([]float32, len(ids[r])*dim)
				}
				d := testjob.NewDriver(b, n, func(r int) error {
					_, err := reducers[r].AllReduce(embCtx, ids[r], grads[r])
					return err
				})
				require.NoError(b, d.Run())
				b.ResetTimer()
				for range b.N {
					if err := d.Run(); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				if reducers[0].Stats().LastDense {
					b.ReportMetric(1, "dense")
				} else {
					b.ReportMetric(0, "dense")
				}
			})
		}
	}
}
