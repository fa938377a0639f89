package nn

import (
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
