package main

import (
	"cmp"
	"encoding/csv"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// record is one CSV row of measure's.
type record struct {
	exp, method      string
	workers, servers int
	bytes            int
	density          float64
	timeUS           float64
}

func readCSV(path string) ([]record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, err
	}
	var out []record
	for i, r := range rows {
		if len(r) != 8 {
			return nil, fmt.Errorf("%s:%d: %d fields, want 8", path, i+1, len(r))
		}
		if r[0] == "experiment" {
			continue
		}
		var rec record
		var errs [5]error
		rec.exp, rec.method = r[0], r[1]
		rec.workers, errs[0] = strconv.Atoi(r[2])
		rec.servers, errs[1] = strconv.Atoi(r[3])
		rec.bytes, errs[2] = strconv.Atoi(r[4])
		rec.density, errs[3] = strconv.ParseFloat(r[5], 64)
		rec.timeUS, errs[4] = strconv.ParseFloat(r[6], 64)
		for _, err := range errs {
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", path, i+1, err)
			}
		}
		out = append(out, rec)
	}
	return out, nil
}

// series is one line of a panel.
type series struct {
	name string
	xy   plotter.XYs
}

func (s *series) add(x, y float64) { s.xy = append(s.xy, plotter.XY{X: x, Y: y}) }

func newPanel(title, x, y string, logScales bool) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text, p.Y.Label.Text = x, y
	if logScales {
		p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
		p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
	} else {
		p.Y.Min = 0
	}
	p.Add(plotter.NewGrid())
	p.Legend.Top, p.Legend.Left = true, true
	return p
}

func addSeries(p *plot.Plot, lines []*series) error {
	for i, s := range lines {
		if len(s.xy) == 0 {
			continue
		}
		slices.SortFunc(s.xy, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
		l, pts, err := plotter.NewLinePoints(s.xy)
		if err != nil {
			return err
		}
		l.Color, l.Width = plotutil.Color(i), vg.Points(1.5)
		pts.Color, pts.Shape = plotutil.Color(i), plotutil.Shape(i)
		p.Add(l, pts)
		p.Legend.Add(s.name, l, pts)
	}
	return nil
}

// drawCharts writes ringps.png (time per step against workers, one panel
// per size: ring, PS with 1 server, PS with N/2) and sparse.png (time per
// call against density: sparse, dense, automatic) from the CSV.
func drawCharts(csvPath, dir, title string) error {
	recs, err := readCSV(csvPath)
	if err != nil {
		return err
	}
	var sizes []int
	for _, r := range recs {
		if r.exp == "ringps" && !slices.Contains(sizes, r.bytes) {
			sizes = append(sizes, r.bytes)
		}
	}
	slices.Sort(sizes)
	if len(sizes) > 0 {
		var panels [][]*plot.Plot
		var row []*plot.Plot
		for _, size := range sizes {
			p := newPanel(fmt.Sprintf("%d MiB gradient", size>>20), "workers N", "time per step (ms)", false)
			ring, one, half := &series{name: "ring AllReduce"}, &series{name: "PS, 1 server"}, &series{name: "PS, N/2 servers"}
			for _, r := range recs {
				if r.exp != "ringps" || r.bytes != size {
					continue
				}
				x, y := float64(r.workers), r.timeUS/1e3
				switch {
				case r.method == "ring":
					ring.add(x, y)
				case r.method == "ps":
					if r.servers == 1 {
						one.add(x, y)
					}
					if r.servers == max(1, r.workers/2) {
						half.add(x, y)
					}
				}
			}
			if err := addSeries(p, []*series{ring, one, half}); err != nil {
				return err
			}
			row = append(row, p)
		}
		panels = append(panels, row)
		if err := save(filepath.Join(dir, "ringps.png"), panels, "Ring vs parameter server, 1 Gbit/s per host (Sync PushPull; servers on their own hosts)", title); err != nil {
			return err
		}
	}
	var sparse []record
	for _, r := range recs {
		if r.exp == "sparse" {
			sparse = append(sparse, r)
		}
	}
	if len(sparse) == 0 {
		return nil
	}
	p := newPanel(fmt.Sprintf("%d ranks, a %.1f MB table", sparse[0].workers, float64(sparse[0].bytes)/1e6), "rows touched per rank (fraction)", "time per call (ms)", true)
	p.Legend.Top, p.Legend.Left = false, false
	lines := map[string]*series{"sparse": {name: "sparse (AllGatherV of index, row)"}, "dense": {name: "dense AllReduce"}, "auto": {name: "automatic"}}
	for _, r := range sparse {
		if s, ok := lines[r.method]; ok {
			s.add(r.density, r.timeUS/1e3)
		}
	}
	if err := addSeries(p, []*series{lines["sparse"], lines["dense"], lines["auto"]}); err != nil {
		return err
	}
	return save(filepath.Join(dir, "sparse.png"), [][]*plot.Plot{{p}}, "Sparse gradient sync of a replicated embedding table", title)
}

// save draws panels (rows of plots) under a heading into a PNG.
func save(path string, panels [][]*plot.Plot, heading, subtitle string) error {
	cols := len(panels[0])
	w, h := max(16*vg.Centimeter, vg.Length(cols)*11*vg.Centimeter), vg.Length(len(panels))*10*vg.Centimeter+2*vg.Centimeter
	c, err := draw.NewFormattedCanvas(w, h, "png")
	if err != nil {
		return err
	}
	dc := draw.New(c)
	font := plot.DefaultFont
	font.Size = vg.Points(13)
	style := draw.TextStyle{Color: color.Black, Font: font, Handler: plot.DefaultTextHandler, XAlign: draw.XCenter, YAlign: draw.YTop}
	dc.FillText(style, vg.Point{X: w / 2, Y: h - vg.Millimeter*2}, heading)
	if subtitle != "" {
		style.Font.Size = vg.Points(10)
		dc.FillText(style, vg.Point{X: w / 2, Y: h - vg.Millimeter*9}, subtitle)
	}
	dc = draw.Crop(dc, 0, 0, 0, -2*vg.Centimeter)
	tiles := draw.Tiles{Rows: len(panels), Cols: cols, PadX: vg.Centimeter, PadY: vg.Centimeter / 2, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}
	canvases := plot.Align(panels, tiles, dc)
	for i := range panels {
		for j := range panels[i] {
			panels[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
