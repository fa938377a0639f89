package chart

import (
	"fmt"
	"io"
	"slices"
	"strconv"
)

// WriteTable writes points as markdown tables, one per number of ranks:
// a row per size, and per library its time (us) and busbw (GB/s).
func WriteTable(w io.Writer, points []Point) {
	ns, libs := distinct(points)
	for _, n := range ns {
		var sizes []float64
		at := map[string]map[float64]Point{}
		for _, p := range points {
			if p.N != n {
				continue
			}
			if !slices.Contains(sizes, p.Bytes) {
				sizes = append(sizes, p.Bytes)
			}
			if at[p.Library] == nil {
				at[p.Library] = map[float64]Point{}
			}
			at[p.Library][p.Bytes] = p
		}
		slices.Sort(sizes)
		var here []string
		for _, lib := range libs {
			if at[lib] != nil {
				here = append(here, lib)
			}
		}
		fmt.Fprintf(w, "\n%d ranks: time per call (us) / busbw (GB/s)\n\n| size |", n)
		for _, lib := range here {
			fmt.Fprintf(w, " %s |", lib)
		}
		fmt.Fprint(w, "\n|---:|")
		for range here {
			fmt.Fprint(w, "---:|")
		}
		fmt.Fprintln(w)
		for _, s := range sizes {
			fmt.Fprintf(w, "| %s |", HumanBytes(s))
			for _, lib := range here {
				p, ok := at[lib][s]
				if !ok {
					fmt.Fprint(w, " |")
					continue
				}
				fmt.Fprintf(w, " %s / %s |", sig(p.TimeUS), sig(p.BusBW))
			}
			fmt.Fprintln(w)
		}
	}
}

// sig writes v with 3 significant digits, without exponents for usual values.
func sig(v float64) string {
	if v != 0 && (v < 0.001 || v >= 1e7) {
		return strconv.FormatFloat(v, 'e', 2, 64)
	}
	return strconv.FormatFloat(v, 'g', max(3, len(strconv.FormatFloat(v, 'f', 0, 64))), 64)
}
