package parallel

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// planShapes are the schedule, P and v combinations the checker is proven
// over (1F1B runs one stage per rank).
func planShapes(maxRanks, maxChunks int) (shapes []struct {
	schedule      PipelineSchedule
	ranks, chunks int
}) {
	for _, s := range []PipelineSchedule{GPipe, OneFOneB, Interleaved1F1B} {
		for p := 1; p <= maxRanks; p++ {
			for v := 1; v <= maxChunks; v++ {
				if s == OneFOneB && v > 1 {
					continue
				}
				shapes = append(shapes, struct {
					schedule      PipelineSchedule
					ranks, chunks int
				}{s, p, v})
			}
		}
	}
	return shapes
}

// TestEveryPlanChecks is the proof the issue asks for: every schedule for
// P <= 8, M <= 32, v <= 4 is deadlock-free, runs each forward before its
// backward, pairs every send with its receive, and keeps its memory bound.
func TestEveryPlanChecks(t *testing.T) {
	for _, sh := range planShapes(8, 4) {
		for m := 1; m <= 32; m++ {
			name := fmt.Sprintf("%v/P=%d/v=%d/M=%d", sh.schedule, sh.ranks, sh.chunks, m)
			plan, err := NewPipelinePlan(sh.schedule, sh.ranks, sh.chunks, m)
			require.NoError(t, err, name)
			require.NoError(t, plan.Check(), name)
			peak := plan.PeakAlive()
			for s, n := range peak {
				r := plan.RankOf(s)
				switch {
				case sh.schedule == GPipe:
					require.Equal(t, m, n, "%s: gpipe holds every micro-batch on stage %d", name, s)
				case sh.chunks == 1:
					require.Equal(t, min(m, sh.ranks-r), n, "%s: 1f1b holds P-r micro-batches on stage %d", name, s)
				}
			}
			if sh.schedule == Interleaved1F1B && sh.chunks > 1 {
				// A rank holds its warm-up plus the one in flight: at most
				// (v-1)·R0 + 2(P-1-r) + 1, R0 <= 2P-1 the first round.
				for r, n := range plan.PeakAliveRank() {
					bound := (sh.chunks-1)*(2*sh.ranks-1) + 2*(sh.ranks-1-r) + 1
					require.LessOrEqual(t, n, min(bound, sh.chunks*m), "%s: rank %d", name, r)
				}
			}
		}
	}
}

// TestSimulatedBubbleIsTheory: with equal stages and free messages the
// simulated idle fraction of every rank is the textbook bubble, exactly for
// GPipe and 1F1B and for the interleaved schedule when P divides M, within
// half a point when it does not (M > P).
func TestSimulatedBubbleIsTheory(t *testing.T) {
	for _, costs := range []PipelineCosts{{Forward: 1, Backward: 1}, {Forward: 1, Backward: 2}, {Forward: 2, Backward: 3}} {
		for _, sh := range planShapes(8, 4) {
			if sh.schedule == GPipe && sh.chunks > 1 {
				continue // looped GPipe has no textbook figure
			}
			for m := sh.ranks; m <= 32; m++ {
				plan, err := NewPipelinePlan(sh.schedule, sh.ranks, sh.chunks, m)
				require.NoError(t, err)
				trace, err := plan.Simulate(costs)
				require.NoError(t, err)
				want := TheoreticalBubble(sh.schedule, sh.ranks, sh.chunks, m)
				tol := 1e-12
				if sh.schedule == Interleaved1F1B && m%sh.ranks != 0 {
					tol = 0.005
				}
				for r := range sh.ranks {
					require.InDelta(t, want, trace.Bubble(r), tol, "%v P=%d v=%d M=%d rank %d costs %+v", sh.schedule, sh.ranks, sh.chunks, m, r, costs)
				}
			}
		}
	}
}

func TestInterleavedWithOneChunkIsOneFOneB(t *testing.T) {
	for p := 1; p <= 8; p++ {
		for m := 1; m <= 32; m++ {
			a, err := NewPipelinePlan(OneFOneB, p, 1, m)
			require.NoError(t, err)
			b, err := NewPipelinePlan(Interleaved1F1B, p, 1, m)
			require.NoError(t, err)
			require.Equal(t, a.Actions, b.Actions)
		}
	}
}

func TestNewPipelinePlanRejectsBadSizes(t *testing.T) {
	for _, c := range []struct {
		schedule             PipelineSchedule
		ranks, chunks, micro int
	}{
		{GPipe, 0, 1, 1}, {GPipe, 1, 0, 1}, {GPipe, 1, 1, 0}, {OneFOneB, 2, 2, 4},
		{PipelineSchedule(9), 2, 1, 4}, {GPipe, -1, 1, 1}, {GPipe, 2, 1, maxPlanMicrobatches + 1},
	} {
		_, err := NewPipelinePlan(c.schedule, c.ranks, c.chunks, c.micro)
		require.ErrorIs(t, err, ErrBadPlan, "%+v", c)
	}
}

func TestParsePipelineSchedule(t *testing.T) {
	for _, s := range []PipelineSchedule{GPipe, OneFOneB, Interleaved1F1B} {
		got, err := ParsePipelineSchedule(strings.ToUpper(s.String()))
		require.NoError(t, err)
		require.Equal(t, s, got)
	}
	_, err := ParsePipelineSchedule("zero-bubble")
	require.ErrorContains(t, err, "zero-bubble")
}

// brokenPlan is a valid 1F1B plan of 2 ranks and 4 micro-batches for a test
// to break.
func brokenPlan(t *testing.T) *PipelinePlan {
	t.Helper()
	p, err := NewPipelinePlan(OneFOneB, 2, 1, 4)
	require.NoError(t, err)
	require.NoError(t, p.Check())
	for r := range p.Actions {
		p.Actions[r] = slices.Clone(p.Actions[r])
	}
	return p
}

func indexOf(t *testing.T, acts []Action, kind ActionKind, stage, mb int) int {
	t.Helper()
	for i, a := range acts {
		if a.Kind == kind && a.Stage == stage && a.Microbatch == mb {
			return i
		}
	}
	t.Fatalf("no %v(stage %d, mb %d)", kind, stage, mb)
	return -1
}

// TestCheckFindsBrokenPlans builds plans that would hang or compute wrong
// results and requires the checker to name what is wrong.
func TestCheckFindsBrokenPlans(t *testing.T) {
	t.Run("deadlock", func(t *testing.T) {
		// Rank 0 waits for micro-batch 0's gradient before it sends
		// micro-batch 1; rank 1 wants micro-batch 1 before it runs 0: each
		// waits for the other.
		orders := [][]op{
			{{mb: 0}, {backward: true, mb: 0}, {mb: 1}, {backward: true, mb: 1}},
			{{mb: 1}, {mb: 0}, {backward: true, mb: 0}, {backward: true, mb: 1}},
		}
		p := &PipelinePlan{Schedule: GPipe, Ranks: 2, Chunks: 1, Microbatches: 2, Actions: withMessages(2, 1, orders)}
		err := p.Check()
		require.ErrorIs(t, err, ErrBadPlan)
		require.ErrorContains(t, err, "deadlock")
		require.ErrorContains(t, err, "rank 0 at #3 B(stage 0, mb 0) waits for #0 RecvGrad(stage 0, mb 0, from rank 1)")
		require.ErrorContains(t, err, "rank 1 at #2 F(stage 1, mb 1) waits for #1 RecvAct(stage 1, mb 1, from rank 0)")
	})
	t.Run("receives out of order", func(t *testing.T) {
		// GPipe's last rank posts both receives before its first forward;
		// posted the other way round, each list is fine on its own but the
		// channel pairs micro-batch 0's send with micro-batch 1's receive.
		p, err := NewPipelinePlan(GPipe, 2, 1, 2)
		require.NoError(t, err)
		acts := slices.Clone(p.Actions[1])
		i, j := indexOf(t, acts, RecvActivation, 1, 0), indexOf(t, acts, RecvActivation, 1, 1)
		require.Equal(t, []int{0, 1}, []int{i, j})
		acts[0], acts[1] = acts[1], acts[0]
		for k := range acts {
			acts[k].Deps = slices.Clone(acts[k].Deps)
			for d, dep := range acts[k].Deps {
				if dep <= 1 {
					acts[k].Deps[d] = 1 - dep
				}
			}
		}
		p.Actions[1] = acts
		require.NoError(t, p.checkLists(), "each list is well formed")
		err = p.Check()
		require.ErrorIs(t, err, ErrBadPlan)
		require.ErrorContains(t, err, "activations rank 0 -> rank 1, message #1: rank 0 sends SendAct(stage 0, mb 0, to rank 1) (action #1) where rank 1 receives RecvAct(stage 1, mb 1, from rank 0) (action #0)")
	})
	t.Run("missing dependency", func(t *testing.T) {
		p := brokenPlan(t)
		p.Actions[1][indexOf(t, p.Actions[1], RunForward, 1, 2)].Deps = nil
		require.ErrorContains(t, p.Check(), "does not depend on")
	})
	t.Run("backward before forward", func(t *testing.T) {
		orders := [][]op{
			{{mb: 0}, {backward: true, mb: 0}},
			{{backward: true, mb: 0}, {mb: 0}},
		}
		p := &PipelinePlan{Schedule: GPipe, Ranks: 2, Chunks: 1, Microbatches: 1, Actions: withMessages(2, 1, orders)}
		require.ErrorContains(t, p.Check(), "B(stage 1, mb 0): comes before F of stage 1, micro-batch 0")
	})
	t.Run("missing receive", func(t *testing.T) {
		p := brokenPlan(t)
		acts := p.Actions[0]
		i := indexOf(t, acts, RecvGradient, 0, 3)
		for k := range acts[i+1:] {
			for d, dep := range acts[i+1+k].Deps {
				if dep > i {
					acts[i+1+k].Deps[d] = dep - 1
				}
			}
		}
		p.Actions[0] = slices.Delete(acts, i, i+1)
		require.ErrorContains(t, p.Check(), "comes before RecvGrad of stage 0, micro-batch 3")
	})
	t.Run("unmatched send", func(t *testing.T) {
		p := brokenPlan(t)
		p.Actions[0] = append(p.Actions[0], Action{Kind: SendActivation, Stage: 0, Microbatch: 3, Peer: 1, Deps: []int{0}})
		require.ErrorContains(t, p.Check(), "appears twice")
	})
	t.Run("send to the wrong rank", func(t *testing.T) {
		p, err := NewPipelinePlan(GPipe, 3, 1, 2)
		require.NoError(t, err)
		p.Actions[0][indexOf(t, p.Actions[0], SendActivation, 0, 1)].Peer = 2
		require.ErrorContains(t, p.Check(), "peer is 2, want 1")
	})
	t.Run("1f1b that holds too much", func(t *testing.T) {
		p, err := NewPipelinePlan(GPipe, 2, 1, 4)
		require.NoError(t, err)
		p.Schedule = OneFOneB
		require.ErrorContains(t, p.Check(), "stage 0 holds 4 micro-batches at once; 1f1b allows 2")
	})
	t.Run("stage on the wrong rank", func(t *testing.T) {
		p := brokenPlan(t)
		p.Actions[0][0].Stage = 1
		require.ErrorContains(t, p.Check(), "is not one of rank 0's")
	})
}

func TestTimeline(t *testing.T) {
	plan, err := NewPipelinePlan(OneFOneB, 3, 1, 4)
	require.NoError(t, err)
	trace, err := plan.Simulate(DefaultPipelineCosts)
	require.NoError(t, err)
	var b strings.Builder
	require.NoError(t, trace.WriteTimeline(&b))
	want := `1f1b: 3 ranks × 1 stages, 4 micro-batches, forward 1, backward 2, transfer 0: makespan 18, bubble 33.3% (theory 33.3%)
rank 0 | 0F0 0F1 0F2 .   .   .   .   0B0     0F3 0B1     .   0B2     .   0B3     | idle 33.3%
rank 1 | .   1F0 1F1 .   .   1B0     1F2 1B1     1F3 1B2     .   1B3     .   .   | idle 33.3%
rank 2 | .   .   2F0 2B0     2F1 2B1     2F2 2B2     2F3 2B3     .   .   .   .   | idle 33.3%
`
	assert.Equal(t, want, b.String())
	trace.Costs = PipelineCosts{}
	require.Error(t, trace.WriteTimeline(&b))
}
