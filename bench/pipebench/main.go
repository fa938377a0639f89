// Command pipebench measures parallel.Pipeline: each schedule's bubble (the
// idle fraction of every rank) against theory, the activation memory each
// rank holds, and the samples per second, with compute-bound stages.
//
//	pipebench                                  ranks as goroutines, stages that wait (see -compute)
//	pipebench -compute cpu -stages 2           stages that burn a CPU core
//	ringrun -np 4 pipebench -stages 4          one rank per process (netns hosts: ringrun --hosts)
//
// A stage's compute is calibrated: each micro-batch's forward on a stage
// takes -forward, its backward twice that, divided by the stages per rank
// (v) so that every schedule computes the same model. -compute sleep makes
// that compute a timed wait that leaves the CPU free: the benchmark's only
// fake, so that P stages measure a pipeline of P machines on a machine with
// fewer cores. -compute cpu spins a core for the time instead, for machines
// with a core per stage. Messages are -rows × -width float32s.
//
// Per configuration it prints the measured bubble (mean over ranks of
// 1 − busy/step time), the textbook figure ((P−1)/(M+P−1), interleaved
// (P−1)/(v·M+P−1)), the plan's simulated one, the peak activation bytes per
// rank (largest over ranks) and samples/s.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/cli"
	"github.com/ringo-ml/ringo/internal/localjob"
	"github.com/ringo-ml/ringo/parallel"
	"github.com/ringo-ml/ringo/parallel/pipechart"
)

func main() { cli.Main(run) }

type options struct {
	schedules []parallel.PipelineSchedule
	stages    []int
	micro     []int
	chunks    int
	compute   string
	forward   time.Duration
	steps     int
	rows      int
	width     int
	transport string
	csv       string
	timeline  string
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("pipebench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	schedules := fs.String("schedules", "gpipe,1f1b,interleaved", "schedules to measure")
	stages := fs.String("stages", "2,4", "ranks per pipeline (P) to measure")
	micro := fs.String("microbatches", "4,8,16", "micro-batches per step (M) to measure")
	fs.IntVar(&o.chunks, "chunks", 2, "stages per rank (v) of the interleaved schedule")
	fs.StringVar(&o.compute, "compute", "sleep", "a stage's compute: sleep (a timed wait, the CPU stays free) or cpu (a spinning core)")
	fs.DurationVar(&o.forward, "forward", 4*time.Millisecond, "one micro-batch's forward on one rank's share of the model (backward: twice)")
	fs.IntVar(&o.steps, "steps", 5, "timed steps per configuration (after one warm-up step)")
	fs.IntVar(&o.rows, "rows", 16, "rows per micro-batch")
	fs.IntVar(&o.width, "width", 1024, "float32s per row of every activation")
	fs.StringVar(&o.transport, "transport", "mem", "ranks in this process talk over mem (in-process pipes) or tcp (loopback)")
	fs.StringVar(&o.csv, "csv", "", "also write the rows to this CSV file")
	fs.StringVar(&o.timeline, "timeline", "", "draw the measured timeline of each configuration's last step into FILE-<config>.EXT, EXT svg or png (in-process runs)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var errs []error
	for _, name := range strings.Split(*schedules, ",") {
		s, err := parallel.ParsePipelineSchedule(strings.TrimSpace(name))
		errs = append(errs, err)
		o.schedules = append(o.schedules, s)
	}
	var err error
	o.stages, err = parseInts(*stages)
	errs = append(errs, err)
	o.micro, err = parseInts(*micro)
	errs = append(errs, err)
	if o.compute != "sleep" && o.compute != "cpu" {
		errs = append(errs, fmt.Errorf("-compute %q: want sleep or cpu", o.compute))
	}
	if o.chunks < 1 || o.steps < 1 || o.rows < 1 || o.width < 1 || o.forward <= 0 {
		errs = append(errs, fmt.Errorf("-chunks, -steps, -rows, -width and -forward must be positive"))
	}
	if o.transport != "mem" && o.transport != "tcp" {
		errs = append(errs, fmt.Errorf("-transport %q: want mem or tcp", o.transport))
	}
	return o, errors.Join(errs...)
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("bad number %q in %q", f, s)
		}
		out = append(out, v)
	}
	return out, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	return cli.Run("pipebench", stderr, err, func() error {
		var burn *burner
		if o.compute == "cpu" {
			burn = calibrate()
		}
		var results []result
		var err error
		if localjob.InJob() {
			results, err = runRank(ctx, &o, burn)
		} else {
			results, err = runInProcess(ctx, &o, burn)
		}
		if err != nil || results == nil { // results: rank 0 of a job, or in-process
			return err
		}
		return report(&o, results, stdout)
	})
}

// config is one measured configuration.
type config struct {
	schedule       parallel.PipelineSchedule
	ranks, m, v    int
	forward, extra time.Duration
}

func (c config) name() string {
	return fmt.Sprintf("%v-P%d-M%d-v%d", c.schedule, c.ranks, c.m, c.v)
}

func configs(o *options, only int) []config {
	var cs []config
	for _, p := range o.stages {
		if only > 0 && p != only {
			continue
		}
		for _, s := range o.schedules {
			v := 1
			if s == parallel.Interleaved1F1B {
				v = o.chunks
			}
			for _, m := range o.micro {
				cs = append(cs, config{schedule: s, ranks: p, m: m, v: v})
			}
		}
	}
	return cs
}

// result is one configuration's measurement.
type result struct {
	config
	bubble     []float64 // by rank
	peakBytes  []int64   // by rank
	samplesSec float64
	stepTime   time.Duration // mean
}

// runInProcess measures every configuration with its ranks as goroutines.
func runInProcess(ctx context.Context, o *options, burn *burner) ([]result, error) {
	var results []result
	for _, c := range configs(o, 0) {
		var comms []*collective.Comm
		var err error
		if o.transport == "tcp" {
			comms, err = collective.LocalNetwork(ctx, c.ranks, collective.Config{Transport: "tcp"})
		} else {
			comms, err = collective.Local(c.ranks)
		}
		if err != nil {
			return nil, err
		}
		res, traces, err := measureAll(ctx, o, c, comms, burn)
		for _, cm := range comms {
			cm.Close()
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.name(), err)
		}
		results = append(results, res)
		if o.timeline != "" {
			if err := drawTimeline(o, c, traces); err != nil {
				return nil, err
			}
		}
	}
	return results, nil
}

// measureAll runs one configuration on every rank of comms at once.
func measureAll(ctx context.Context, o *options, c config, comms []*collective.Comm, burn *burner) (result, [][2][]time.Duration, error) {
	res := result{config: c, bubble: make([]float64, c.ranks), peakBytes: make([]int64, c.ranks)}
	traces := make([][2][]time.Duration, c.ranks)
	errs := make([]error, c.ranks)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for r := range c.ranks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := measure(ctx, o, c, comms[r], burn)
			if err != nil {
				errs[r] = err
				return
			}
			mu.Lock()
			defer mu.Unlock()
			res.bubble[r], res.peakBytes[r] = m.bubble, m.peakBytes
			traces[r] = m.times
			if r == 0 {
				res.samplesSec, res.stepTime = m.samplesSec, m.stepTime
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return res, nil, err
	}
	return res, traces, nil
}

// rankMeasure is what one rank measured.
type rankMeasure struct {
	bubble     float64
	peakBytes  int64
	samplesSec float64
	stepTime   time.Duration
	times      [2][]time.Duration // the last step's action start and end times
}

// measure is one rank's part of a configuration: one warm-up step, then
// o.steps timed ones.
func measure(ctx context.Context, o *options, c config, comm *collective.Comm, burn *burner) (rankMeasure, error) {
	var out rankMeasure
	p, r := c.ranks, comm.Rank()
	stages := make([]parallel.Stage, c.v)
	for k := range stages {
		st := &benchStage{fwd: o.forward / time.Duration(c.v)}
		if burn != nil {
			st.burn = &burner{perMicro: burn.perMicro} // a sink of its own: stages run at once
		}
		stages[k] = st
	}
	pipe, err := parallel.NewPipeline(ctx, comm, stages, parallel.PipelineOptions{Schedule: c.schedule, Microbatches: c.m})
	if err != nil {
		return out, err
	}
	defer pipe.Close()
	samples := c.m * o.rows
	var batch parallel.Batch
	if r == 0 || r == p-1 {
		batch = parallel.Batch{Samples: samples, Inputs: make([]float32, samples*o.width), Targets: make([]float32, samples*o.width)}
	}
	var busy, wall time.Duration
	for step := range o.steps + 1 {
		if _, err := pipe.Step(ctx, batch); err != nil {
			return out, err
		}
		if step == 0 {
			continue // warm-up: buffers, connections
		}
		st := pipe.Stats()
		busy += st.Busy
		wall += st.StepTime
	}
	st := pipe.Stats()
	start, end := pipe.ActionTimes()
	out.times = [2][]time.Duration{slices.Clone(start), slices.Clone(end)}
	out.bubble = 1 - float64(busy)/float64(wall)
	out.peakBytes = st.PeakActivationBytes
	out.stepTime = wall / time.Duration(o.steps)
	out.samplesSec = float64(samples*o.steps) / wall.Seconds()
	return out, nil
}

// runRank is one rank of a job: the configurations whose P is the job's
// size; rank 0 gathers every rank's figures and returns them.
func runRank(ctx context.Context, o *options, burn *burner) ([]result, error) {
	comm, err := collective.Init(ctx)
	if err != nil {
		return nil, err
	}
	defer comm.Close()
	var results []result
	for _, c := range configs(o, comm.Size()) {
		m, err := measure(ctx, o, c, comm, burn)
		if err != nil {
			return nil, fmt.Errorf("rank %d, %s: %w", comm.Rank(), c.name(), err)
		}
		mine := []float64{m.bubble, float64(m.peakBytes)}
		all := make([]float64, 2*c.ranks)
		if err := collective.Gather(ctx, comm, mine, all, 0); err != nil {
			return nil, err
		}
		res := result{config: c, samplesSec: m.samplesSec, stepTime: m.stepTime}
		for r := range c.ranks {
			res.bubble = append(res.bubble, all[2*r])
			res.peakBytes = append(res.peakBytes, int64(all[2*r+1]))
		}
		results = append(results, res)
	}
	if len(results) == 0 {
		return nil, fmt.Errorf("no -stages value is the job's %d ranks", comm.Size())
	}
	if comm.Rank() != 0 {
		return nil, nil
	}
	return results, nil
}

func report(o *options, results []result, stdout io.Writer) error {
	fmt.Fprintf(stdout, "# pipebench: compute %s, forward %v per micro-batch per rank (backward 2×), %d×%d float32 messages, %d steps, transport %s\n",
		o.compute, o.forward, o.rows, o.width, o.steps, transportName(o))
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "schedule\tP\tM\tv\tbubble %\ttheory %\tplan %\tΔ points\tworst rank %\tpeak act. KiB/rank\tstep ms\tsamples/s\t")
	var csv strings.Builder
	csv.WriteString("schedule,P,M,v,bubble,theory,plan,worst,peak_bytes,step_ms,samples_per_s\n")
	for _, r := range results {
		mean, worst := 0.0, 0.0
		for _, b := range r.bubble {
			mean += b / float64(len(r.bubble))
			worst = max(worst, b)
		}
		theory := parallel.TheoreticalBubble(r.schedule, r.ranks, r.v, r.m)
		plan, err := parallel.NewPipelinePlan(r.schedule, r.ranks, r.v, r.m)
		if err != nil {
			return err
		}
		tr, err := plan.Simulate(parallel.PipelineCosts{Forward: 1, Backward: 2})
		if err != nil {
			return err
		}
		simulated := 0.0
		for k := range r.ranks {
			simulated += tr.Bubble(k) / float64(r.ranks)
		}
		peak := slices.Max(r.peakBytes)
		fmt.Fprintf(tw, "%v\t%d\t%d\t%d\t%.1f\t%.1f\t%.1f\t%+.1f\t%.1f\t%.0f\t%.1f\t%.0f\t\n", r.schedule, r.ranks, r.m, r.v,
			100*mean, 100*theory, 100*simulated, 100*(mean-theory), 100*worst, float64(peak)/1024, float64(r.stepTime.Microseconds())/1000, r.samplesSec)
		fmt.Fprintf(&csv, "%v,%d,%d,%d,%.4f,%.4f,%.4f,%.4f,%d,%.3f,%.1f\n", r.schedule, r.ranks, r.m, r.v,
			mean, theory, simulated, worst, peak, float64(r.stepTime.Microseconds())/1000, r.samplesSec)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if o.csv != "" {
		return os.WriteFile(o.csv, []byte(csv.String()), 0o644)
	}
	return nil
}

func transportName(o *options) string {
	if localjob.InJob() {
		if t := os.Getenv("RINGO_TRANSPORT"); t != "" {
			return t + " (job)"
		}
		return "tcp (job)"
	}
	return o.transport + " (in process)"
}

// drawTimeline charts the last step of c as measured, in milliseconds.
func drawTimeline(o *options, c config, times [][2][]time.Duration) error {
	plan, err := parallel.NewPipelinePlan(c.schedule, c.ranks, c.v, c.m)
	if err != nil {
		return err
	}
	tr := &parallel.PipelineTrace{Plan: plan, Costs: parallel.PipelineCosts{Forward: 1, Backward: 2}}
	for r := range c.ranks {
		var start, end []float64
		for i := range times[r][0] {
			start = append(start, float64(times[r][0][i].Microseconds())/1000)
			end = append(end, float64(times[r][1][i].Microseconds())/1000)
			tr.Makespan = max(tr.Makespan, end[i])
		}
		tr.Start, tr.End = append(tr.Start, start), append(tr.End, end)
	}
	ext := filepath.Ext(o.timeline)
	file := strings.TrimSuffix(o.timeline, ext) + "-" + c.name() + ext
	bubble := 0.0
	for r := range c.ranks {
		bubble += tr.Bubble(r) / float64(c.ranks)
	}
	title := fmt.Sprintf("measured: %v, P=%d, M=%d, v=%d, compute %s: bubble %.1f%% (theory %.1f%%), time in ms",
		c.schedule, c.ranks, c.m, c.v, o.compute, 100*bubble, 100*parallel.TheoreticalBubble(c.schedule, c.ranks, c.v, c.m))
	return pipechart.Draw(file, tr, title)
}

// benchStage is a compute-bound stage: its forward takes fwd and its
// backward 2·fwd (waiting, or spinning a core), whatever the message size;
// its output is its input's values.
type benchStage struct {
	fwd   time.Duration
	burn  *burner
	outs  [][]float32
	param parallel.Param
}

func (s *benchStage) compute(d time.Duration) {
	if s.burn != nil {
		s.burn.spin(d)
		return
	}
	time.Sleep(d) // the calibrated stand-in for compute: see the command's doc
}

func (s *benchStage) Params() []*parallel.Param {
	if s.param.Data == nil {
		s.param = parallel.Param{Name: "w", Data: make([]float32, 1), Grad: make([]float32, 1)}
	}
	return []*parallel.Param{&s.param}
}

func (s *benchStage) Forward(_ context.Context, mb int, in []float32) ([]float32, error) {
	for len(s.outs) <= mb {
		s.outs = append(s.outs, nil)
	}
	if cap(s.outs[mb]) < len(in) {
		s.outs[mb] = make([]float32, len(in))
	}
	out := s.outs[mb][:len(in)]
	copy(out, in)
	s.compute(s.fwd)
	return out, nil
}

func (s *benchStage) Backward(_ context.Context, _ int, dOut, dIn []float32) error {
	s.compute(2 * s.fwd)
	copy(dIn, dOut)
	s.param.Grad[0]++
	return nil
}

func (s *benchStage) Loss(_ context.Context, _ int, out, _, dOut []float32) (float64, error) {
	copy(dOut, out)
	return 0, nil
}

// burner spins a core for a given time with real arithmetic, calibrated
// once, so that a stage's compute does not depend on the clock's
// resolution and takes its core for the whole time.
type burner struct {
	perMicro float64 // iterations per microsecond
	sink     float64
}

func calibrate() *burner {
	b := &burner{}
	const n = 1 << 22
	best := time.Duration(1 << 62)
	for range 5 {
		t0 := time.Now()
		b.iterate(n)
		best = min(best, time.Since(t0))
	}
	b.perMicro = n / float64(best.Microseconds())
	return b
}

func (b *burner) iterate(n int) {
	x := b.sink + 1
	for range n {
		x = x*1.0000001 + 1e-9
	}
	b.sink = x
}

func (b *burner) spin(d time.Duration) {
	b.iterate(int(b.perMicro * float64(d.Microseconds())))
}
