// Command plot draws the chart of a benchmark CSV (the combined CSV of
// bench/peers/run.sh, or ringbench --csv): bus bandwidth and latency
// against buffer size, one line per library, one row of panels per number
// of ranks. With -table it also prints the points as markdown tables.
//
//	go run ./bench/plot -o bench/results/allreduce.png -table bench/results/allreduce.csv
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/ringo-ml/ringo/bench/chart"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "chart.png", "output file (.png, .svg or .pdf)")
	title := fs.String("title", "", "chart title (the date and machine, say)")
	table := fs.Bool("table", false, "also print the points as markdown tables on stdout")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: plot [-o FILE.png] [-title T] [-table] RESULTS.csv ...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	var points []chart.Point
	for _, name := range fs.Args() {
		ps, err := readFile(name)
		if err != nil {
			fmt.Fprintln(stderr, "plot:", err)
			return 1
		}
		points = append(points, ps...)
	}
	if err := chart.Draw(*out, points, *title); err != nil {
		fmt.Fprintln(stderr, "plot:", err)
		return 1
	}
	if *table {
		chart.WriteTable(stdout, points)
	}
	return 0
}

func readFile(name string) ([]chart.Point, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ps, err := chart.ReadCSV(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return ps, nil
}
