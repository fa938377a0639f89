// Package chart draws benchmark results the way users compare collective
// libraries: bus bandwidth and latency against buffer size (log scale), one
// line per library, one row of panels per number of ranks.
package chart

import (
	"cmp"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Point is one measured size of one library at one number of ranks.
type Point struct {
	Library string
	N       int     // ranks
	Bytes   float64 // buffer size
	TimeUS  float64 // time per call
	BusBW   float64 // GB/s
}

// Draw writes the chart of points to file; its extension picks the format
// (png, svg, pdf, ...). title heads the chart (the date and machine, say).
func Draw(file string, points []Point, title string) error {
	ns, libs := distinct(points)
	if len(ns) == 0 {
		return fmt.Errorf("chart: no points to draw")
	}
	plots := make([][]*plot.Plot, len(ns))
	for i, n := range ns {
		bw, lat := plot.New(), plot.New()
		bw.Title.Text = fmt.Sprintf("bus bandwidth, %d ranks", n)
		bw.Y.Label.Text = "busbw (GB/s)"
		bw.Y.Min = 0
		lat.Title.Text = fmt.Sprintf("latency, %d ranks", n)
		lat.Y.Label.Text = "time per call (us)"
		lat.Y.Scale = plot.LogScale{}
		lat.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		for _, p := range []*plot.Plot{bw, lat} {
			p.X.Label.Text = "buffer size (bytes)"
			p.X.Scale = plot.LogScale{}
			p.X.Tick.Marker = sizeTicks{}
			p.Add(plotter.NewGrid())
			p.Legend.Top, p.Legend.Left = true, true
		}
		for j, lib := range libs {
			var bwXY, latXY plotter.XYs
			for _, pt := range points {
				if pt.N != n || pt.Library != lib || pt.Bytes <= 0 {
					continue
				}
				bwXY = append(bwXY, plotter.XY{X: pt.Bytes, Y: pt.BusBW})
				if pt.TimeUS > 0 {
					latXY = append(latXY, plotter.XY{X: pt.Bytes, Y: pt.TimeUS})
				}
			}
			if len(bwXY) == 0 {
				continue
			}
			slices.SortFunc(bwXY, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
			slices.SortFunc(latXY, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
			for _, pair := range []struct {
				p  *plot.Plot
				xy plotter.XYs
			}{{bw, bwXY}, {lat, latXY}} {
				if len(pair.xy) == 0 {
					continue
				}
				l, s, err := plotter.NewLinePoints(pair.xy)
				if err != nil {
					return err
				}
				l.Color, l.Width, l.Dashes = plotutil.Color(j), vg.Points(1.5), plotutil.Dashes(j/7)
				s.Color, s.Shape = plotutil.Color(j), plotutil.Shape(j)
				pair.p.Add(l, s)
				if pair.p == bw { // the latency panel beside it has the same lines
					pair.p.Legend.Add(lib, l, s)
				}
			}
		}
		plots[i] = []*plot.Plot{bw, lat}
	}

	w, h := 30*vg.Centimeter, vg.Length(len(ns))*11*vg.Centimeter+vg.Centimeter
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(file)), ".")
	c, err := draw.NewFormattedCanvas(w, h, format)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	dc := draw.New(c)
	if title != "" {
		font := plot.DefaultFont
		font.Size = vg.Points(14)
		dc.FillText(draw.TextStyle{Color: color.Black, Font: font, Handler: plot.DefaultTextHandler, XAlign: draw.XCenter, YAlign: draw.YTop},
			vg.Point{X: w / 2, Y: h - vg.Millimeter*2}, title)
		dc = draw.Crop(dc, 0, 0, 0, -vg.Centimeter)
	}
	tiles := draw.Tiles{Rows: len(ns), Cols: 2, PadX: vg.Centimeter, PadY: vg.Centimeter / 2, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		for j := range plots[i] {
			plots[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// distinct returns the rank counts and libraries of points, in order of
// first appearance for libraries (so a caller chooses the legend order).
func distinct(points []Point) (ns []int, libs []string) {
	for _, p := range points {
		if !slices.Contains(ns, p.N) {
			ns = append(ns, p.N)
		}
		if !slices.Contains(libs, p.Library) {
			libs = append(libs, p.Library)
		}
	}
	slices.Sort(ns)
	return ns, libs
}

// sizeTicks marks powers of two, labelling 4·16^k (4, 64, 1K, 16K, 256K, 4M, 64M, ...).
type sizeTicks struct{}

func (sizeTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for k := math.Floor(math.Log2(math.Max(lo, 1))); math.Exp2(k) <= hi*1.0001; k++ {
		v := math.Exp2(k)
		if v < lo*0.9999 {
			continue
		}
		t := plot.Tick{Value: v}
		if int(k)%4 == 2 {
			t.Label = HumanBytes(v)
		}
		ts = append(ts, t)
	}
	return ts
}

// HumanBytes writes 1024 as 1K, 1<<20 as 1M (binary multiples).
func HumanBytes(v float64) string {
	switch {
	case v >= 1<<30:
		return fmt.Sprintf("%gG", v/(1<<30))
	case v >= 1<<20:
		return fmt.Sprintf("%gM", v/(1<<20))
	case v >= 1<<10:
		return fmt.Sprintf("%gK", v/(1<<10))
	}
	return fmt.Sprintf("%g", v)
}
