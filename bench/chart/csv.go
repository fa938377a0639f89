package chart

import (
	"encoding/csv"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ReadCSV reads points from a CSV with a header naming at least the
// columns library, n, bytes, time_us and busbw (in any order; others are
// ignored): the combined peer CSV of bench/peers/run.sh, or ringbench --csv.
func ReadCSV(r io.Reader) ([]Point, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.Comment = '#'
	recs, err := cr.ReadAll()
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("chart: empty CSV")
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[strings.TrimSpace(h)] = i
	}
	for _, need := range []string{"library", "n", "bytes", "time_us", "busbw"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("chart: the CSV has no column %q", need)
		}
	}
	var ps []Point
	for li, rec := range recs[1:] {
		get := func(name string) string {
			if i := col[name]; i < len(rec) {
				return strings.TrimSpace(rec[i])
			}
			return ""
		}
		n, err1 := strconv.Atoi(get("n"))
		b, err2 := strconv.ParseFloat(get("bytes"), 64)
		t, err3 := strconv.ParseFloat(get("time_us"), 64)
		bw, err4 := strconv.ParseFloat(get("busbw"), 64)
		for _, err := range []error{err1, err2, err3, err4} {
			if err != nil {
				return nil, fmt.Errorf("chart: CSV line %d: %w", li+2, err)
			}
		}
		ps = append(ps, Point{Library: get("library"), N: n, Bytes: b, TimeUS: t, BusBW: bw})
	}
	return ps, nil
}
