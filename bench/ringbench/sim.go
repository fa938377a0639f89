package main

import (
	"fmt"
	"io"
	"math"
	"slices"
)

// The alpha-beta model: a message of S bytes between two ranks costs
// alpha + S·beta. Per algorithm, an AllReduce of S bytes on N ranks costs
//
//	ring:          2(N-1)·alpha + 2(N-1)/N·S·beta
//	tree:          2·log2(N)·alpha + 2·log2(N)·S·beta      (reduce up, broadcast down, unpipelined)
//	doubling:      log2(N)·alpha + log2(N)·S·beta          (recursive doubling: whole vectors exchanged)
//	hierarchical:  ring ReduceScatter and AllGather inside groups of g ranks,
//	               ring AllReduce of S/g bytes across the N/g groups
//
// alpha and beta come from the measured rows: the measured collective's own
// cost formula on n ranks is a + b·S, fitted by least relative squares.

// stepsFor is the measured collective's cost as (alpha steps, beta bytes factor) on n ranks.
func stepsFor(collective string, n int) (float64, float64) {
	f := float64(n-1) / float64(n)
	switch collective {
	case "allreduce":
		return 2 * float64(n-1), 2 * f
	case "reducescatter", "allgather", "alltoall", "gather", "scatter":
		return float64(n - 1), f
	}
	return float64(n - 1), 1 // broadcast: a pipelined chain
}

// fitLine finds a, b >= 0 minimising the sum of ((a + b·x)/y - 1)^2.
func fitLine(xs, ys []float64) (a, b float64) {
	var s11, s12, s22, t1, t2 float64
	for i := range xs {
		u, v := 1/ys[i], xs[i]/ys[i] // the model divided by y
		s11 += u * u
		s12 += u * v
		s22 += v * v
		t1 += u
		t2 += v
	}
	if det := s11*s22 - s12*s12; det != 0 {
		a, b = (t1*s22-t2*s12)/det, (s11*t2-s12*t1)/det
	}
	switch {
	case a < 0 || (a == 0 && b == 0 && s22 > 0):
		a, b = 0, t2/s22
	case b < 0 && s11 > 0:
		a, b = t1/s11, 0
	}
	return max(a, 0), max(b, 0)
}

type model struct{ alpha, beta float64 } // seconds, seconds per byte

func fitModel(collective string, n int, rows []row) (model, error) {
	var xs, ys []float64
	for _, r := range rows {
		if r.TimeUS > 0 {
			xs, ys = append(xs, float64(r.Bytes)), append(ys, r.TimeUS*1e-6)
		}
	}
	if len(xs) < 2 || n < 2 {
		return model{}, fmt.Errorf("--sim needs at least two measured sizes and two ranks")
	}
	a, b := fitLine(xs, ys)
	ka, kb := stepsFor(collective, n)
	return model{alpha: a / ka, beta: b / kb}, nil
}

func (m model) ring(n int, s float64) float64 {
	return 2*float64(n-1)*m.alpha + 2*float64(n-1)/float64(n)*s*m.beta
}

func (m model) tree(n int, s float64) float64 {
	l := math.Ceil(math.Log2(float64(n)))
	return 2*l*m.alpha + 2*l*s*m.beta
}

func (m model) doubling(n int, s float64) float64 {
	l := math.Ceil(math.Log2(float64(n)))
	return l*m.alpha + l*s*m.beta
}

// hier groups ranks by g (at most 8, like the GPUs or sockets of a node).
func (m model) hier(n int, s float64) float64 {
	g := min(8, n)
	for n%g != 0 {
		g--
	}
	groups := n / g
	intra := 2 * (float64(g-1)*m.alpha + float64(g-1)/float64(g)*s*m.beta)
	return intra + m.ring(groups, s/float64(g))*boolf(groups > 1)
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// writeSim prints the model fitted to rows (measured on n ranks) and its
// AllReduce predictions for 2, 4, ... up to maxN ranks.
func writeSim(w io.Writer, collective, algo string, n int, rows []row, maxN int) error {
	m, err := fitModel(collective, n, rows)
	if err != nil {
		return err
	}
	var resid []float64
	ka, kb := stepsFor(collective, n)
	for _, r := range rows {
		if r.TimeUS > 0 {
			pred := ka*m.alpha + kb*float64(r.Bytes)*m.beta
			resid = append(resid, math.Abs(pred/(r.TimeUS*1e-6)-1))
		}
	}
	slices.Sort(resid)
	bwText := "inf"
	if m.beta > 0 {
		bwText = fmt.Sprintf("%.3f", 1/m.beta/1e9)
	}
	fmt.Fprintf(w, "#\n# --sim: alpha-beta model fitted to the %d-rank %s rows: alpha = %.2f us, beta = %.4f ns/B (1/beta = %s GB/s), median misfit %.0f%%\n",
		n, collective, m.alpha*1e6, m.beta*1e9, bwText, 100*resid[len(resid)/2])
	if algo != "ring" && collective == "allreduce" {
		fmt.Fprintf(w, "# (the rows were measured with --algo %s, fitted as if ring: use --algo ring for a clean fit)\n", algo)
	}
	fmt.Fprintf(w, "# predicted AllReduce per algorithm (hier: ring inside groups of 8, ring across groups; same alpha and beta on every link)\n")
	fmt.Fprintf(w, "%6s %10s %10s %10s %10s %10s %10s %10s %10s %10s %8s\n", "ranks", "size(B)",
		"ring(us)", "busbw", "tree(us)", "busbw", "dbl(us)", "busbw", "hier(us)", "busbw", "best")
	sizes := simSizes(rows)
	for _, nn := range simRanks(maxN) {
		for _, s := range sizes {
			ts := []float64{m.ring(nn, s), m.tree(nn, s), m.doubling(nn, s), m.hier(nn, s)}
			best := []string{"ring", "tree", "doubling", "hier"}[argmin(ts)]
			bus := func(t float64) float64 {
				if t <= 0 {
					return 0
				}
				return s / t / 1e9 * busFactor("allreduce", nn)
			}
			fmt.Fprintf(w, "%6d %10.0f", nn, s)
			for _, t := range ts {
				fmt.Fprintf(w, " %10s %10s", fmtTime(t*1e6), fmtBW(bus(t)))
			}
			fmt.Fprintf(w, " %8s\n", best)
		}
	}
	return nil
}

// simSizes: the smallest and largest measured sizes and 1 MiB between them.
func simSizes(rows []row) []float64 {
	lo, hi := math.Inf(1), 0.0
	for _, r := range rows {
		lo, hi = min(lo, float64(r.Bytes)), max(hi, float64(r.Bytes))
	}
	out := []float64{lo}
	if lo < 1<<20 && hi > 1<<20 {
		out = append(out, 1<<20)
	}
	if hi > lo {
		out = append(out, hi)
	}
	return out
}

func simRanks(maxN int) []int {
	var out []int
	for n := 2; n < maxN; n *= 4 {
		out = append(out, n)
	}
	return append(out, max(2, maxN))
}

func argmin(v []float64) int {
	best := 0
	for i := range v {
		if v[i] < v[best] {
			best = i
		}
	}
	return best
}
