package parallel

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
)

// PipelineCosts are the durations a simulation gives each kind of action,
// in any unit: a Forward, a Backward, and the transfer of one message once
// both its Send and its Recv are issued.
type PipelineCosts struct {
	Forward, Backward, Transfer float64
}

// DefaultPipelineCosts: a backward costs twice a forward, messages are free.
var DefaultPipelineCosts = PipelineCosts{Forward: 1, Backward: 2}

// PipelineTrace is one simulated run of a plan.
type PipelineTrace struct {
	Plan  *PipelinePlan
	Costs PipelineCosts
	// Start and End of every action, by rank and index: when a compute ran;
	// when a Send was issued and its message delivered; when a Recv was
	// posted and its message arrived.
	Start, End [][]float64
	Makespan   float64 // when the last action ended (the first starts at 0)
}

// Busy is the time rank spends computing.
func (t *PipelineTrace) Busy(rank int) float64 {
	var busy float64
	for i, a := range t.Plan.Actions[rank] {
		if a.Kind.compute() {
			busy += t.End[rank][i] - t.Start[rank][i]
		}
	}
	return busy
}

// Bubble is the fraction of the makespan that rank spends idle.
func (t *PipelineTrace) Bubble(rank int) float64 {
	if t.Makespan == 0 {
		return 0
	}
	return 1 - t.Busy(rank)/t.Makespan
}

// TheoreticalBubble is the idle fraction the literature gives a schedule
// whose stages all cost the same and whose messages are free: (P−1)/(M+P−1)
// for GPipe and 1F1B, (P−1)/(v·M+P−1) for the interleaved schedule.
func TheoreticalBubble(schedule PipelineSchedule, ranks, chunks, microbatches int) float64 {
	p, m := float64(ranks), float64(microbatches)
	if schedule == Interleaved1F1B {
		m *= float64(chunks)
	}
	return (p - 1) / (m + p - 1)
}

// PeakAlive is, per stage, the most micro-batches whose forward has run and
// whose backward has not, at any point of the plan: the activations the
// stage must hold.
func (p *PipelinePlan) PeakAlive() []int {
	peak := make([]int, p.Stages())
	alive := make([]int, p.Stages())
	for _, acts := range p.Actions {
		for _, a := range acts {
			if a.Stage < 0 || a.Stage >= len(alive) {
				continue
			}
			switch a.Kind {
			case RunForward:
				alive[a.Stage]++
				peak[a.Stage] = max(peak[a.Stage], alive[a.Stage])
			case RunBackward:
				alive[a.Stage]--
			}
		}
	}
	return peak
}

// PeakAliveRank is PeakAlive summed over the stages of each rank at each
// point: the micro-batch activations a rank holds at most.
func (p *PipelinePlan) PeakAliveRank() []int {
	peak := make([]int, p.Ranks)
	for r, acts := range p.Actions {
		alive := 0
		for _, a := range acts {
			switch a.Kind {
			case RunForward:
				alive++
				peak[r] = max(peak[r], alive)
			case RunBackward:
				alive--
			}
		}
	}
	return peak
}

// Check proves that the plan runs to the end: it checks each rank's list
// (every forward and backward of its stages exactly once, forward first,
// each with the dependencies it needs, every message to the right peer),
// then simulates the ranks' lists against each other, a Send completing
// only once its Recv is posted (so buffering cannot hide a deadlock), and
// fails if the ranks deadlock, if a channel's k-th Send and k-th Recv are
// not the same message, or if a message is never received. OneFOneB plans
// must also keep at most P micro-batches alive per stage.
func (p *PipelinePlan) Check() error {
	if err := p.checkLists(); err != nil {
		return err
	}
	if _, err := p.Simulate(PipelineCosts{Forward: 1, Backward: 1}); err != nil {
		return err
	}
	if p.Schedule == OneFOneB || (p.Schedule == Interleaved1F1B && p.Chunks == 1) {
		for s, n := range p.PeakAlive() {
			if n > p.Ranks {
				return fmt.Errorf("%w: stage %d holds %d micro-batches at once; 1f1b allows %d", ErrBadPlan, s, n, p.Ranks)
			}
		}
	}
	return nil
}

// checkLists checks each rank's list on its own.
func (p *PipelinePlan) checkLists() error {
	if p.Ranks < 1 || p.Chunks < 1 || p.Microbatches < 1 || len(p.Actions) != p.Ranks {
		return fmt.Errorf("%w: %d ranks, %d chunks, %d micro-batches, action lists for %d ranks",
			ErrBadPlan, p.Ranks, p.Chunks, p.Microbatches, len(p.Actions))
	}
	stages, m := p.Stages(), p.Microbatches
	type ref struct {
		kind      ActionKind
		stage, mb int
	}
	for r, acts := range p.Actions {
		fail := func(i int, format string, args ...any) error {
			return fmt.Errorf("%w: rank %d action #%d %v: %s", ErrBadPlan, r, i, acts[i], fmt.Sprintf(format, args...))
		}
		at := map[ref]int{}
		for i, a := range acts {
			if a.Stage < 0 || a.Stage >= stages || p.RankOf(a.Stage) != r {
				return fail(i, "stage %d is not one of rank %d's", a.Stage, r)
			}
			if a.Microbatch < 0 || a.Microbatch >= m {
				return fail(i, "micro-batch %d is not in 0..%d", a.Microbatch, m-1)
			}
			if _, dup := at[ref{a.Kind, a.Stage, a.Microbatch}]; dup {
				return fail(i, "it appears twice")
			}
			for _, d := range a.Deps {
				if d < 0 || d >= i {
					return fail(i, "dependency #%d is not an earlier action", d)
				}
			}
			// requires finds the action a needs, which must come earlier and be
			// among its dependencies.
			requires := func(kind ActionKind, stage int) error {
				j, ok := at[ref{kind, stage, a.Microbatch}]
				if !ok {
					return fail(i, "comes before %v of stage %d, micro-batch %d", kind, stage, a.Microbatch)
				}
				for _, d := range a.Deps {
					if d == j {
						return nil
					}
				}
				return fail(i, "does not depend on #%d %v", j, acts[j])
			}
			local := func(stage int) bool { return p.RankOf(stage) == r }
			wantPeer := -1
			var err error
			switch a.Kind {
			case RunForward:
				if s := a.Stage; s > 0 {
					if local(s - 1) {
						err = requires(RunForward, s-1)
					} else {
						err = requires(RecvActivation, s)
					}
				}
			case RunBackward:
				s := a.Stage
				err = requires(RunForward, s)
				if err == nil && s+1 < stages {
					if local(s + 1) {
						err = requires(RunBackward, s+1)
					} else if err = requires(RecvGradient, s); err == nil {
						err = requires(SendActivation, s)
					}
				}
			case SendActivation:
				if a.Stage+1 >= stages || local(a.Stage+1) {
					return fail(i, "stage %d's output stays on rank %d", a.Stage, r)
				}
				wantPeer, err = p.RankOf(a.Stage+1), requires(RunForward, a.Stage)
			case SendGradient:
				if a.Stage == 0 || local(a.Stage-1) {
					return fail(i, "stage %d's input gradient stays on rank %d", a.Stage, r)
				}
				wantPeer, err = p.RankOf(a.Stage-1), requires(RunBackward, a.Stage)
			case RecvActivation:
				if a.Stage == 0 || local(a.Stage-1) {
					return fail(i, "stage %d's input comes from rank %d itself", a.Stage, r)
				}
				wantPeer = p.RankOf(a.Stage - 1)
			case RecvGradient:
				if a.Stage+1 >= stages || local(a.Stage+1) {
					return fail(i, "stage %d's output gradient comes from rank %d itself", a.Stage, r)
				}
				wantPeer = p.RankOf(a.Stage + 1)
			default:
				return fail(i, "unknown kind")
			}
			if err != nil {
				return err
			}
			if a.Peer != wantPeer {
				return fail(i, "peer is %d, want %d", a.Peer, wantPeer)
			}
			at[ref{a.Kind, a.Stage, a.Microbatch}] = i
		}
		// Every forward and backward of the rank's stages, and the sends
		// their results need.
		for s := r; s < stages; s += p.Ranks {
			for mb := range m {
				for _, k := range []ActionKind{RunForward, RunBackward} {
					if _, ok := at[ref{k, s, mb}]; !ok {
						return fmt.Errorf("%w: rank %d never runs %v(stage %d, mb %d)", ErrBadPlan, r, k, s, mb)
					}
				}
				if s+1 < stages && p.RankOf(s+1) != r {
					if _, ok := at[ref{SendActivation, s, mb}]; !ok {
						return fmt.Errorf("%w: rank %d never sends stage %d's output of mb %d", ErrBadPlan, r, s, mb)
					}
				}
				if s > 0 && p.RankOf(s-1) != r {
					if _, ok := at[ref{SendGradient, s, mb}]; !ok {
						return fmt.Errorf("%w: rank %d never sends stage %d's input gradient of mb %d", ErrBadPlan, r, s, mb)
					}
				}
			}
		}
	}
	return nil
}

// channel is one direction of one kind of message between two ranks.
type channel struct {
	grad     bool
	from, to int
}

func (c channel) String() string {
	what := "activations"
	if c.grad {
		what = "gradients"
	}
	return fmt.Sprintf("%s rank %d -> rank %d", what, c.from, c.to)
}

// channelOf is the channel a Send or Recv action of rank r uses.
func channelOf(r int, a Action) channel {
	switch a.Kind {
	case SendActivation:
		return channel{false, r, a.Peer}
	case SendGradient:
		return channel{true, r, a.Peer}
	case RecvActivation:
		return channel{false, a.Peer, r}
	default:
		return channel{true, a.Peer, r}
	}
}

// sameMessage reports whether send and recv are the two ends of one message.
func sameMessage(send, recv Action) bool {
	if send.Microbatch != recv.Microbatch {
		return false
	}
	if send.Kind == SendActivation {
		return recv.Kind == RecvActivation && recv.Stage == send.Stage+1
	}
	return recv.Kind == RecvGradient && recv.Stage == send.Stage-1
}

// Simulate runs the plan's actions against each other with the given
// costs: each rank runs its list in order; a compute starts when its rank
// is free and its dependencies are done; a message's transfer starts when
// its Send and Recv are both issued and the channel's previous message has
// arrived. It fails, naming the blocked actions, if the ranks deadlock, and
// if a channel's Sends and Recvs do not pair up. It assumes the lists are
// well formed (Check checks both).
func (p *PipelinePlan) Simulate(costs PipelineCosts) (*PipelineTrace, error) {
	t := &PipelineTrace{Plan: p, Costs: costs, Start: make([][]float64, p.Ranks), End: make([][]float64, p.Ranks)}
	for r, acts := range p.Actions {
		t.Start[r], t.End[r] = make([]float64, len(acts)), make([]float64, len(acts))
		for i := range acts {
			t.End[r][i] = math.NaN() // not done yet
		}
	}
	type end struct{ rank, index int }
	type queue struct {
		sends, recvs []end
		last         float64 // when the previous message arrived
		done         int     // messages delivered
	}
	queues := map[channel]*queue{}
	queueOf := func(c channel) *queue {
		q := queues[c]
		if q == nil {
			q = &queue{}
			queues[c] = q
		}
		return q
	}
	// deliver pairs up the channel's issued sends and recvs in order.
	deliver := func(c channel, q *queue) error {
		for q.done < len(q.sends) && q.done < len(q.recvs) {
			s, r := q.sends[q.done], q.recvs[q.done]
			sa, ra := p.Actions[s.rank][s.index], p.Actions[r.rank][r.index]
			if !sameMessage(sa, ra) {
				return fmt.Errorf("%w: %v, message #%d: rank %d sends %v (action #%d) where rank %d receives %v (action #%d)",
					ErrBadPlan, c, q.done+1, s.rank, sa, s.index, r.rank, ra, r.index)
			}
			start := max(t.Start[s.rank][s.index], t.Start[r.rank][r.index], q.last)
			q.last = start + costs.Transfer
			t.End[s.rank][s.index], t.End[r.rank][r.index] = q.last, q.last
			q.done++
		}
		return nil
	}
	pc := make([]int, p.Ranks)
	clock := make([]float64, p.Ranks)
	for {
		progress := false
		for r, acts := range p.Actions {
			for pc[r] < len(acts) {
				i, a := pc[r], acts[pc[r]]
				if !a.Kind.compute() {
					c := channelOf(r, a)
					q := queueOf(c)
					t.Start[r][i] = clock[r]
					if a.Kind == SendActivation || a.Kind == SendGradient {
						q.sends = append(q.sends, end{r, i})
					} else {
						q.recvs = append(q.recvs, end{r, i})
					}
					if err := deliver(c, q); err != nil {
						return nil, err
					}
					pc[r]++
					progress = true
					continue
				}
				ready := clock[r]
				for _, d := range a.Deps {
					ready = max(ready, t.End[r][d]) // NaN (not done) propagates
				}
				if math.IsNaN(ready) {
					break
				}
				cost := costs.Forward
				if a.Kind == RunBackward {
					cost = costs.Backward
				}
				t.Start[r][i], t.End[r][i] = ready, ready+cost
				clock[r] = ready + cost
				pc[r]++
				progress = true
			}
		}
		if !progress {
			break
		}
	}
	var blocked []string
	for r, acts := range p.Actions {
		if pc[r] == len(acts) {
			continue
		}
		a := acts[pc[r]]
		var waits []string
		for _, d := range a.Deps {
			if math.IsNaN(t.End[r][d]) {
				waits = append(waits, fmt.Sprintf("#%d %v", d, acts[d]))
			}
		}
		blocked = append(blocked, fmt.Sprintf("rank %d at #%d %v waits for %s", r, pc[r], a, strings.Join(waits, ", ")))
	}
	if len(blocked) > 0 {
		return nil, fmt.Errorf("%w: deadlock: %s", ErrBadPlan, strings.Join(blocked, "; "))
	}
	for _, c := range slices.SortedFunc(maps.Keys(queues), func(a, b channel) int {
		return cmp.Or(cmp.Compare(a.from, b.from), cmp.Compare(a.to, b.to), cmp.Compare(btoi(a.grad), btoi(b.grad)))
	}) {
		if q := queues[c]; len(q.sends) != len(q.recvs) {
			return nil, fmt.Errorf("%w: %v: %d sends, %d receives", ErrBadPlan, c, len(q.sends), len(q.recvs))
		}
	}
	for r := range p.Actions {
		for _, e := range t.End[r] {
			t.Makespan = max(t.Makespan, e)
		}
	}
	return t, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
