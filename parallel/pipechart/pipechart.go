// Package pipechart draws a pipeline schedule's timeline (a simulated or a
// measured parallel.PipelineTrace) as a chart: one row per rank, one box
// per forward and backward, labelled like the text timeline, so the bubble
// is the white space. It lives apart from package parallel so that training
// programs do not link the plotting library.
package pipechart

import (
	"fmt"
	"image/color"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/ringo-ml/ringo/parallel"
)

// Draw writes the chart of t to file; the extension picks the format (svg,
// png, pdf, ...). title heads it; "" gives one naming the schedule, its
// sizes and its bubble beside theory's.
func Draw(file string, t *parallel.PipelineTrace, title string) error {
	if t == nil || t.Plan == nil || t.Makespan <= 0 {
		return fmt.Errorf("pipechart: nothing to draw (an empty trace)")
	}
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(file)), ".")
	if format == "" {
		return fmt.Errorf("pipechart: %q has no extension to choose a format by", file)
	}
	p := plot.New()
	pl := t.Plan
	if title == "" {
		bubble := 0.0
		for r := range pl.Ranks {
			bubble += t.Bubble(r)
		}
		title = fmt.Sprintf("%v, %d ranks × %d stages, %d micro-batches: bubble %.1f%% (theory %.1f%%)",
			pl.Schedule, pl.Ranks, pl.Chunks, pl.Microbatches, 100*bubble/float64(pl.Ranks),
			100*parallel.TheoreticalBubble(pl.Schedule, pl.Ranks, pl.Chunks, pl.Microbatches))
	}
	p.Title.Text = title
	p.X.Label.Text = "time"
	p.X.Min, p.X.Max = 0, t.Makespan
	p.Y.Min, p.Y.Max = -0.5, float64(pl.Ranks)-0.5
	ticks := make([]plot.Tick, pl.Ranks)
	for r := range ticks {
		ticks[r] = plot.Tick{Value: float64(pl.Ranks - 1 - r), Label: fmt.Sprintf("rank %d", r)}
	}
	p.Y.Tick.Marker = plot.ConstantTicks(ticks)
	p.Add(plotter.NewGrid())
	p.Add(boxes{t})
	w := vg.Length(14+min(40, t.Makespan/4)) * vg.Centimeter
	h := vg.Length(3+1.2*float64(pl.Ranks)) * vg.Centimeter
	return p.Save(w, h, file)
}

// boxes is the plotter of a trace's computes.
type boxes struct{ t *parallel.PipelineTrace }

func (b boxes) Plot(c draw.Canvas, p *plot.Plot) {
	tx, ty := p.Transforms(&c)
	t := b.t
	pl := t.Plan
	font := plot.DefaultFont
	font.Size = vg.Points(7)
	style := draw.TextStyle{Color: color.Black, Font: font, Handler: plot.DefaultTextHandler, XAlign: draw.XCenter, YAlign: draw.YCenter}
	for r, acts := range pl.Actions {
		y := float64(pl.Ranks - 1 - r)
		for i, a := range acts {
			if a.Kind != parallel.RunForward && a.Kind != parallel.RunBackward {
				continue
			}
			x0, x1 := tx(t.Start[r][i]), tx(t.End[r][i])
			y0, y1 := ty(y-0.4), ty(y+0.4)
			box := []vg.Point{{X: x0, Y: y0}, {X: x1, Y: y0}, {X: x1, Y: y1}, {X: x0, Y: y1}}
			c.FillPolygon(fill(a, pl), c.ClipPolygonXY(box))
			c.StrokeLines(draw.LineStyle{Color: color.White, Width: vg.Points(0.5)}, c.ClipLinesXY(append(box, box[0]))...)
			if x1-x0 > style.Width(a.Label()) {
				c.FillText(style, vg.Point{X: (x0 + x1) / 2, Y: (y0 + y1) / 2}, a.Label())
			}
		}
	}
}

// fill colours forwards blue and backwards orange, a rank's later stages
// (chunks) darker.
func fill(a parallel.Action, pl *parallel.PipelinePlan) color.Color {
	chunk := a.Stage / pl.Ranks
	shade := uint8(0)
	if pl.Chunks > 1 {
		shade = uint8(80 * chunk / (pl.Chunks - 1))
	}
	if a.Kind == parallel.RunForward {
		return color.RGBA{R: 140 - shade, G: 180 - shade, B: 240 - shade/2, A: 255}
	}
	return color.RGBA{R: 250 - shade/2, G: 180 - shade, B: 100 - shade, A: 255}
}
