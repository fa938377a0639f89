package parallel

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Label names a compute action in a timeline: the stage, F or B, and the
// micro-batch, as torch prints them ("1F3": stage 1's forward of
// micro-batch 3).
func (a Action) Label() string {
	return strconv.Itoa(a.Stage) + a.Kind.String() + strconv.Itoa(a.Microbatch)
}

// WriteTimeline prints the trace as one row per rank, one cell per time
// unit (the cheaper of a forward and a backward): each compute shows its
// Label where it starts and fills the cells it lasts; a '.' is a unit the
// rank waits. A header gives the schedule and its bubble beside theory's.
func (t *PipelineTrace) WriteTimeline(w io.Writer) error {
	p := t.Plan
	unit := t.Costs.Forward
	if t.Costs.Backward > 0 && (unit <= 0 || t.Costs.Backward < unit) {
		unit = t.Costs.Backward
	}
	if unit <= 0 {
		return fmt.Errorf("parallel: a timeline needs a positive forward or backward cost, not %+v", t.Costs)
	}
	cells := int(math.Ceil(t.Makespan/unit - 1e-9))
	width := 1
	for _, acts := range p.Actions {
		for _, a := range acts {
			if a.Kind.compute() {
				width = max(width, len(a.Label()))
			}
		}
	}
	width++ // a space between cells
	var b strings.Builder
	bubble := 0.0
	for r := range p.Ranks {
		bubble += t.Bubble(r)
	}
	fmt.Fprintf(&b, "%v: %d ranks × %d stages, %d micro-batches, forward %g, backward %g, transfer %g: makespan %g, bubble %.1f%% (theory %.1f%%)\n",
		p.Schedule, p.Ranks, p.Chunks, p.Microbatches, t.Costs.Forward, t.Costs.Backward, t.Costs.Transfer,
		t.Makespan, 100*bubble/float64(p.Ranks), 100*TheoreticalBubble(p.Schedule, p.Ranks, p.Chunks, p.Microbatches))
	name := len("rank ") + len(strconv.Itoa(p.Ranks-1))
	for r, acts := range p.Actions {
		line := make([]byte, cells*width)
		for i := range line {
			line[i] = ' '
		}
		for c := range cells {
			line[c*width] = '.'
		}
		for i, a := range acts {
			if !a.Kind.compute() {
				continue
			}
			from := int(math.Round(t.Start[r][i] / unit))
			to := max(from+1, int(math.Round(t.End[r][i]/unit)))
			for c := from; c < to && c < cells; c++ {
				copy(line[c*width:(c+1)*width], strings.Repeat(" ", width))
			}
			if from < cells {
				copy(line[from*width:], a.Label())
			}
		}
		fmt.Fprintf(&b, "%-*s | %s| idle %.1f%%\n", name, "rank "+strconv.Itoa(r), line, 100*t.Bubble(r))
	}
	_, err := io.WriteString(w, b.String())
	return err
}
