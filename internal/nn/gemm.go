package nn

import (
	"runtime"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"
)

// Tile sizes for gemm. gonum's Sgemm hands a product whose C spans four or
// more 64×64 blocks to fresh goroutines, allocating a channel and closures
// on every call; a tile of gemmTileRows × gemmTileCols is three blocks, so
// gonum runs it serially, in the caller's goroutine, allocating nothing.
// Each tile still sees the whole inner dimension, so the summation order of
// every element of C is the one serial gonum would use.
const (
	gemmTileRows = 64
	gemmTileCols = 192
)

// yieldWork is how many multiply-adds gemm does between yields of the
// processor (about a tenth of a millisecond). A training step's
// communication runs on other goroutines (DataParallel's bucket
// reductions, started while backward goes on); with one thread per rank
// (GOMAXPROCS=1) they would otherwise wait for the scheduler to preempt
// this long loop, every 10 ms, and overlap would cost instead of pay.
const yieldWork = 1 << 18

// gemm computes C = alpha·op(A)·op(B) + beta·C for row-major matrices:
// op(A) is m×k, op(B) is k×n and C is m×n. A is stored as m×k (k×m when
// transA), B as k×n (n×k when transB), all densely packed.
func gemm(transA, transB bool, m, n, k int, alpha float32, a, b []float32, beta float32, c []float32) {
	if m == 0 || n == 0 {
		return
	}
	if k == 0 { // an empty batch: op(A)·op(B) is zero
		if beta != 1 {
			for i := range c[:m*n] {
				c[i] *= beta
			}
		}
		return
	}
	tA, tB := blas.NoTrans, blas.NoTrans
	lda, ldb := k, n
	if transA {
		tA, lda = blas.Trans, m
	}
	if transB {
		tB, ldb = blas.Trans, k
	}
	work := 0
	for i0 := 0; i0 < m; i0 += gemmTileRows {
		mi := min(gemmTileRows, m-i0)
		// op(A)'s rows i0..i0+mi: rows of A, or columns when transposed.
		var aTile []float32
		if transA {
			aTile = a[i0:]
		} else {
			aTile = a[i0*lda:]
		}
		for j0 := 0; j0 < n; j0 += gemmTileCols {
			nj := min(gemmTileCols, n-j0)
			var bTile []float32
			if transB {
				bTile = b[j0*ldb:]
			} else {
				bTile = b[j0:]
			}
			blas32.Gemm(tA, tB, alpha,
				blas32.General{Rows: rowsOf(transA, mi, k), Cols: colsOf(transA, mi, k), Stride: lda, Data: aTile},
				blas32.General{Rows: rowsOf(transB, k, nj), Cols: colsOf(transB, k, nj), Stride: ldb, Data: bTile},
				beta,
				blas32.General{Rows: mi, Cols: nj, Stride: n, Data: c[i0*n+j0:]})
			if work += mi * nj * k; work >= yieldWork {
				runtime.Gosched()
				work = 0
			}
		}
	}
}

// rowsOf and colsOf give the stored shape of an operand whose op() is r×c.
func rowsOf(trans bool, r, c int) int {
	if trans {
		return c
	}
	return r
}

func colsOf(trans bool, r, c int) int {
	if trans {
		return r
	}
	return c
}
