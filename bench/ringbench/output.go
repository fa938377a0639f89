package main

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/ringo-ml/ringo/bench/chart"
)

// result is what --json writes: the run and its rows.
type result struct {
	Library    string  `json:"library"`
	Ranks      int     `json:"ranks"`
	Mode       string  `json:"mode"` // processes or goroutines
	Transport  string  `json:"transport"`
	Algo       string  `json:"algo"`
	Date       string  `json:"date"`
	Host       string  `json:"host"`
	CPUs       int     `json:"cpus"`
	Rows       []row   `json:"rows"`
	AvgBusBW   float64 `json:"avg_busbw"`
	WrongTotal int64   `json:"wrong"` // -1: not checked
}

func newResult(o *options, n int, mode string, rows []row) result {
	host, _ := os.Hostname()
	res := result{
		Library: o.label, Ranks: n, Mode: mode, Transport: o.transport, Algo: o.algo,
		Date: time.Now().UTC().Format(time.RFC3339), Host: host, CPUs: runtime.NumCPU(),
		Rows: rows, AvgBusBW: avgBusBW(rows), WrongTotal: -1,
	}
	for _, r := range rows {
		if r.Wrong >= 0 {
			res.WrongTotal = max(res.WrongTotal, 0) + r.Wrong
		}
	}
	return res
}

func avgBusBW(rows []row) float64 {
	if len(rows) == 0 {
		return 0
	}
	s := 0.0
	for _, r := range rows {
		s += r.BusBW
	}
	return s / float64(len(rows))
}

// report writes the table (unless CSV or JSON go to stdout) and the files
// o asks for. It runs on one rank only.
func report(o *options, n int, mode string, rows []row, stdout io.Writer) error {
	res := newResult(o, n, mode, rows)
	if o.csvFile != "-" && o.jsonFile != "-" {
		writeTable(stdout, res)
	}
	if err := writeTo(o.csvFile, stdout, func(w io.Writer) error { return writeCSV(w, res) }); err != nil {
		return err
	}
	if err := writeTo(o.jsonFile, stdout, func(w io.Writer) error { return writeJSON(w, res) }); err != nil {
		return err
	}
	if o.plotFile != "" {
		if err := chart.Draw(o.plotFile, points(res), fmt.Sprintf("ringo %s %s %s, %s", o.collective, o.dtype, res.Date[:10], res.Host)); err != nil {
			return err
		}
	}
	if o.sim > 0 && o.csvFile != "-" && o.jsonFile != "-" {
		return writeSim(stdout, o.collective, o.algo, n, rows, o.sim)
	}
	return nil
}

func writeTo(name string, stdout io.Writer, write func(io.Writer) error) error {
	switch name {
	case "":
		return nil
	case "-":
		return write(stdout)
	}
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func writeTable(w io.Writer, res result) {
	fmt.Fprintf(w, "# ringbench: %s, %d ranks (%s, %s), algo %s, %s, %s, %d CPUs\n",
		res.Library, res.Ranks, res.Mode, res.Transport, res.Algo, res.Date, res.Host, res.CPUs)
	fmt.Fprintf(w, "# time: per call, median over samples of the slowest rank; GB/s = 1e9 B/s\n#\n")
	fmt.Fprintf(w, "%12s %12s %8s %6s %5s %11s %11s %11s %8s\n",
		"size(B)", "count", "type", "redop", "root", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong")
	for _, r := range res.Rows {
		op, root, wrong := r.Op, strconv.Itoa(r.Root), strconv.FormatInt(r.Wrong, 10)
		if op == "" {
			op = "none"
		}
		if r.Wrong < 0 {
			wrong = "N/A"
		}
		fmt.Fprintf(w, "%12d %12d %8s %6s %5s %11s %11s %11s %8s\n",
			r.Bytes, r.Count, r.Type, op, root, fmtTime(r.TimeUS), fmtBW(r.AlgBW), fmtBW(r.BusBW), wrong)
	}
	fmt.Fprintf(w, "# Out of bounds values : %s\n", wrongSummary(res.WrongTotal))
	fmt.Fprintf(w, "# Avg bus bandwidth    : %.4f\n", res.AvgBusBW)
}

func wrongSummary(w int64) string {
	switch {
	case w < 0:
		return "not checked"
	case w == 0:
		return "0 OK"
	}
	return fmt.Sprintf("%d WRONG", w)
}

// fmtTime keeps 4 significant digits for small times, like nccl-tests.
func fmtTime(us float64) string {
	switch {
	case us < 10:
		return strconv.FormatFloat(us, 'f', 3, 64)
	case us < 100:
		return strconv.FormatFloat(us, 'f', 2, 64)
	case us < 1000:
		return strconv.FormatFloat(us, 'f', 1, 64)
	}
	return strconv.FormatFloat(us, 'f', 0, 64)
}

// fmtBW prints GB/s with 3 decimals, or 3 significant digits below 0.01.
func fmtBW(v float64) string {
	if v != 0 && v < 0.01 {
		return strconv.FormatFloat(v, 'e', 2, 64)
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

// csvHeader starts with the columns of the combined peer CSV
// (bench/peers/run.sh), so that its first six columns can be appended to it.
var csvHeader = []string{"library", "n", "bytes", "time_us", "algbw", "busbw",
	"collective", "type", "op", "root", "count", "min_us", "p90_us", "wrong", "samples", "inner", "algo"}

func writeCSV(w io.Writer, res result) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	g := func(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }
	for _, r := range res.Rows {
		rec := []string{res.Library, strconv.Itoa(res.Ranks), strconv.FormatInt(r.Bytes, 10), g(r.TimeUS), g(r.AlgBW), g(r.BusBW),
			r.Collective, r.Type, r.Op, strconv.Itoa(r.Root), strconv.Itoa(r.Count), g(r.MinUS), g(r.P90US),
			strconv.FormatInt(r.Wrong, 10), strconv.Itoa(r.Samples), strconv.Itoa(r.Inner), res.Algo}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

func writeJSON(w io.Writer, res result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

func points(res result) []chart.Point {
	ps := make([]chart.Point, len(res.Rows))
	for i, r := range res.Rows {
		ps[i] = chart.Point{Library: res.Library, N: res.Ranks, Bytes: float64(r.Bytes), TimeUS: r.TimeUS, BusBW: r.BusBW}
	}
	return ps
}

// progressBar draws "[#####.....] 5/24 sizes, running 1 MiB" on a terminal; a nil bar draws nothing.
type progressBar struct {
	w     io.Writer
	drawn bool
}

func (p *progressBar) update(done, total int, bytes int64) {
	if p == nil || total == 0 {
		return
	}
	const width = 30
	fill := done * width / total
	bar := make([]byte, width)
	for i := range bar {
		bar[i] = '.'
		if i < fill {
			bar[i] = '#'
		}
	}
	now := ""
	if done < total {
		now = ", running " + humanBytes(bytes)
	}
	fmt.Fprintf(p.w, "\r[%s] %d/%d sizes%s\033[K", bar, done, total, now)
	p.drawn = true
}

func (p *progressBar) done() {
	if p != nil && p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

func humanBytes(b int64) string {
	switch {
	case b >= 1<<30 && b%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", b>>30)
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", b>>20)
	case b >= 1<<10 && b%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", b>>10)
	}
	return fmt.Sprintf("%d B", b)
}
