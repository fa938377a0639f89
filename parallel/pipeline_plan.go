package parallel

import (
	"errors"
	"fmt"
	"strings"
)

// PipelineSchedule names the order in which a pipeline runs its micro-batches.
type PipelineSchedule uint8

const (
	// GPipe runs every forward, then every backward: simple, M micro-batches
	// of activations alive per stage. With v > 1 stages per rank it runs
	// them breadth first (every micro-batch through a rank's first stage,
	// then through its second ...), as torch's LoopedBFS does.
	GPipe PipelineSchedule = iota + 1
	// OneFOneB (1F1B) starts P-1-r forwards on rank r, then alternates one
	// forward and one backward: the same bubble as GPipe, at most P
	// micro-batches alive per stage. One stage per rank.
	OneFOneB
	// Interleaved1F1B holds v stages per rank (rank r: stages r, r+P, ...)
	// and runs 1F1B over them in rounds of at least P micro-batches (one
	// round of all M when M < P), which divides the bubble by about v. With
	// v = 1 it is OneFOneB.
	Interleaved1F1B
)

func (s PipelineSchedule) String() string {
	switch s {
	case GPipe:
		return "gpipe"
	case OneFOneB:
		return "1f1b"
	case Interleaved1F1B:
		return "interleaved"
	}
	return fmt.Sprintf("PipelineSchedule(%d)", uint8(s))
}

// ParsePipelineSchedule reads a schedule's name as String writes it.
func ParsePipelineSchedule(name string) (PipelineSchedule, error) {
	for _, s := range []PipelineSchedule{GPipe, OneFOneB, Interleaved1F1B} {
		if strings.EqualFold(name, s.String()) {
			return s, nil
		}
	}
	return 0, fmt.Errorf("parallel: unknown pipeline schedule %q (want gpipe, 1f1b or interleaved)", name)
}

// ActionKind is what one action of a pipeline plan does.
type ActionKind uint8

const (
	// RunForward runs a stage's forward on a micro-batch (the last stage also
	// computes the loss).
	RunForward ActionKind = iota + 1
	// RunBackward runs a stage's backward on a micro-batch.
	RunBackward
	// SendActivation sends a stage's output activation to the next stage's rank.
	SendActivation
	// RecvActivation posts the receive of a stage's input activation from the
	// previous stage's rank.
	RecvActivation
	// SendGradient sends the gradient of a stage's input to the previous
	// stage's rank.
	SendGradient
	// RecvGradient posts the receive of the gradient of a stage's output from
	// the next stage's rank.
	RecvGradient
)

var actionNames = [...]string{RunForward: "F", RunBackward: "B", SendActivation: "SendAct", RecvActivation: "RecvAct", SendGradient: "SendGrad", RecvGradient: "RecvGrad"}

func (k ActionKind) String() string {
	if int(k) < len(actionNames) && actionNames[k] != "" {
		return actionNames[k]
	}
	return fmt.Sprintf("ActionKind(%d)", uint8(k))
}

// compute reports whether the action runs the user's code (and blocks its
// rank until it has); the others hand a message to the network and return.
func (k ActionKind) compute() bool { return k == RunForward || k == RunBackward }

// Action is one step of one rank's part of a pipeline plan.
//
// Sends and receives do not block the rank: a Send hands the message to the
// rank's sender for that peer, a Recv posts a receive. Between two ranks,
// activations and gradients each travel on their own channel, in order: the
// k-th SendActivation from rank a to rank b meets the k-th RecvActivation of b
// from a. A RunForward or RunBackward waits for its Deps, then runs.
type Action struct {
	Kind ActionKind
	// Stage is the stage that computes, sends or receives: for SendActivation
	// the stage whose output goes out, for RecvActivation the stage whose
	// input comes in; for SendGradient the stage whose input's gradient goes
	// out, for RecvGradient the stage whose output's gradient comes in.
	Stage      int
	Microbatch int
	// Peer is the rank at the other end of a Send or Recv (-1 for compute).
	Peer int
	// Deps are the earlier actions of the same rank (indices into its
	// list) that must be complete before this one runs: a Forward's input
	// (its RecvAct, or the previous stage's Forward on the same rank), a
	// Backward's Forward and output gradient, the Forward or Backward whose
	// result a Send sends.
	Deps []int
}

func (a Action) String() string {
	switch a.Kind {
	case RunForward, RunBackward:
		return fmt.Sprintf("%v(stage %d, mb %d)", a.Kind, a.Stage, a.Microbatch)
	case SendActivation, SendGradient:
		return fmt.Sprintf("%v(stage %d, mb %d, to rank %d)", a.Kind, a.Stage, a.Microbatch, a.Peer)
	default:
		return fmt.Sprintf("%v(stage %d, mb %d, from rank %d)", a.Kind, a.Stage, a.Microbatch, a.Peer)
	}
}

// PipelinePlan is a pipeline schedule made explicit: the list of actions
// each rank runs, in order, for one step. It is plain data: print it
// (Timeline), check it (Check), simulate it (Simulate), or run it
// (Pipeline, which runs the plan NewPipelinePlan makes).
type PipelinePlan struct {
	Schedule     PipelineSchedule
	Ranks        int        // P
	Chunks       int        // v: stages per rank; rank r holds stages r, r+P, ...
	Microbatches int        // M
	Actions      [][]Action // by rank
}

// Stages is the number of stages, P·v.
func (p *PipelinePlan) Stages() int { return p.Ranks * p.Chunks }

// RankOf is the rank that holds stage s.
func (p *PipelinePlan) RankOf(stage int) int { return stage % p.Ranks }

// ErrBadPlan is the class of a plan's faults: a schedule that cannot be
// made for the given sizes, or a plan Check rejects.
var ErrBadPlan = errors.New("parallel: bad pipeline plan")

// Sizes the checker is proven over; larger plans are made and checked the
// same way, only not exhaustively by the tests.
const (
	maxPlanRanks        = 1 << 12
	maxPlanChunks       = 1 << 8
	maxPlanMicrobatches = 1 << 16
)

// NewPipelinePlan makes the plan of schedule for ranks ranks holding chunks
// stages each, over microbatches micro-batches.
func NewPipelinePlan(schedule PipelineSchedule, ranks, chunks, microbatches int) (*PipelinePlan, error) {
	switch {
	case ranks < 1 || ranks > maxPlanRanks:
		return nil, fmt.Errorf("%w: %d ranks (want 1..%d)", ErrBadPlan, ranks, maxPlanRanks)
	case chunks < 1 || chunks > maxPlanChunks:
		return nil, fmt.Errorf("%w: %d stages per rank (want 1..%d)", ErrBadPlan, chunks, maxPlanChunks)
	case microbatches < 1 || microbatches > maxPlanMicrobatches:
		return nil, fmt.Errorf("%w: %d micro-batches (want 1..%d)", ErrBadPlan, microbatches, maxPlanMicrobatches)
	case schedule == OneFOneB && chunks != 1:
		return nil, fmt.Errorf("%w: 1f1b runs one stage per rank, not %d (use interleaved)", ErrBadPlan, chunks)
	}
	var order func(r int) []op
	switch schedule {
	case GPipe:
		order = func(int) []op { return gpipeOrder(chunks, microbatches) }
	case OneFOneB:
		order = func(r int) []op { return oneFOneBOrder(ranks, r, microbatches) }
	case Interleaved1F1B:
		if chunks == 1 {
			order = func(r int) []op { return oneFOneBOrder(ranks, r, microbatches) }
		} else {
			order = func(r int) []op { return interleavedOrder(ranks, r, chunks, microbatches) }
		}
	default:
		return nil, fmt.Errorf("%w: unknown schedule %v", ErrBadPlan, schedule)
	}
	p := &PipelinePlan{Schedule: schedule, Ranks: ranks, Chunks: chunks, Microbatches: microbatches}
	orders := make([][]op, ranks)
	for r := range orders {
		orders[r] = order(r)
	}
	p.Actions = withMessages(ranks, chunks, orders)
	return p, nil
}

// op is one compute step of a rank: a forward or backward of chunk c
// (stage c·P + r) on micro-batch mb.
type op struct {
	backward bool
	chunk    int
	mb       int
}

func gpipeOrder(chunks, m int) []op {
	ops := make([]op, 0, 2*chunks*m)
	for c := range chunks {
		for i := range m {
			ops = append(ops, op{chunk: c, mb: i})
		}
	}
	for c := chunks - 1; c >= 0; c-- {
		for i := range m {
			ops = append(ops, op{backward: true, chunk: c, mb: i})
		}
	}
	return ops
}

// oneFOneBOrder: rank r runs P-1-r forwards (the micro-batches it can start
// before the first gradient can come back), then one forward and one
// backward at a time, then the backwards left. At most P-r micro-batches
// are ever alive on rank r.
func oneFOneBOrder(p, r, m int) []op {
	warmup := min(p-1-r, m)
	ops := make([]op, 0, 2*m)
	for i := range warmup {
		ops = append(ops, op{mb: i})
	}
	for i := warmup; i < m; i++ {
		ops = append(ops, op{mb: i}, op{backward: true, mb: i - warmup})
	}
	for i := m - warmup; i < m; i++ {
		ops = append(ops, op{backward: true, mb: i})
	}
	return ops
}

// interleavedOrder is 1F1B over v chunks per rank. Micro-batches go in
// rounds: a round's micro-batches pass through chunk 0, then chunk 1, ...,
// then the next round starts; backwards go through the chunks in reverse.
// A round holds at least P micro-batches, so that when rank 0 is done with
// a round's chunk c, the round's first micro-batch is back from rank P-1
// for chunk c+1: the M micro-batches are split into max(1, M/P) rounds as
// evenly as possible (the first rounds one larger; with M < P, one round
// of M, and rank 0 waits for the wrap-around). Rank r warms up with
// the forwards that fill the pipe before its first backward can start:
// (v-1)·R0 + 2·(P-1-r), R0 the first round's size (capped at v·M).
func interleavedOrder(p, r, v, m int) []op {
	rounds := max(1, m/p)
	sizes := make([]int, rounds)
	for k := range sizes {
		sizes[k] = m / rounds
		if k < m%rounds {
			sizes[k]++
		}
	}
	fwd := make([]op, 0, v*m)
	bwd := make([]op, 0, v*m)
	first := 0
	for _, size := range sizes {
		for c := range v {
			for i := first; i < first+size; i++ {
				fwd = append(fwd, op{chunk: c, mb: i})
			}
		}
		for c := v - 1; c >= 0; c-- {
			for i := first; i < first+size; i++ {
				bwd = append(bwd, op{backward: true, chunk: c, mb: i})
			}
		}
		first += size
	}
	warmup := min((v-1)*sizes[0]+2*(p-1-r), v*m)
	ops := make([]op, 0, 2*v*m)
	ops = append(ops, fwd[:warmup]...)
	for k := warmup; k < v*m; k++ {
		ops = append(ops, fwd[k], bwd[k-warmup])
	}
	return append(ops, bwd[v*m-warmup:]...)
}

// withMessages turns each rank's compute order into its action list: the
// sends right after the compute that produced their message, the receives
// posted early. Activations and gradients between two ranks each travel on
// a channel of their own in the sender's order, so a receiver posts its
// receives in that order, at the latest just before the compute before the
// one that needs them (so a receive overlaps one compute), earlier if a
// message that the sender sends first is needed later.
func withMessages(ranks, chunks int, orders [][]op) [][]Action {
	stages := ranks * chunks
	stageOf := func(r int, o op) int { return o.chunk*ranks + r }
	// Each channel's messages in the sender's order, by the stage and
	// micro-batch that receives them.
	type key struct {
		grad     bool
		from, to int
	}
	type msg struct{ stage, mb int }
	sent := map[key][]msg{}
	for r, ops := range orders {
		for _, o := range ops {
			s := stageOf(r, o)
			switch {
			case !o.backward && s+1 < stages && (s+1)%ranks != r:
				k := key{false, r, (s + 1) % ranks}
				sent[k] = append(sent[k], msg{s + 1, o.mb})
			case o.backward && s > 0 && (s-1)%ranks != r:
				k := key{true, r, (s - 1) % ranks}
				sent[k] = append(sent[k], msg{s - 1, o.mb})
			}
		}
	}
	plan := make([][]Action, ranks)
	for r, ops := range orders {
		var acts []Action
		posted := map[key]int{}
		// at[stage*M+mb] would need M; a map keeps this generic and runs once.
		type ref struct {
			kind  ActionKind
			stage int
			mb    int
		}
		at := map[ref]int{}
		add := func(a Action) int {
			acts = append(acts, a)
			at[ref{a.Kind, a.Stage, a.Microbatch}] = len(acts) - 1
			return len(acts) - 1
		}
		// need posts the receives of channel k up to the one of msg m.
		need := func(k key, m msg) {
			list := sent[k]
			for posted[k] < len(list) {
				n := list[posted[k]]
				posted[k]++
				kind := RecvActivation
				if k.grad {
					kind = RecvGradient
				}
				add(Action{Kind: kind, Stage: n.stage, Microbatch: n.mb, Peer: k.from})
				if n == m {
					return
				}
			}
		}
		// inputOf posts the receive op needs, if its input comes from
		// another rank.
		inputOf := func(o op) {
			s := stageOf(r, o)
			switch {
			case !o.backward && s > 0 && (s-1)%ranks != r:
				need(key{false, (s - 1) % ranks, r}, msg{s, o.mb})
			case o.backward && s+1 < stages && (s+1)%ranks != r:
				need(key{true, (s + 1) % ranks, r}, msg{s, o.mb})
			}
		}
		if len(ops) > 0 {
			inputOf(ops[0])
		}
		for j, o := range ops {
			if j+1 < len(ops) {
				inputOf(ops[j+1])
			}
			s := stageOf(r, o)
			if !o.backward {
				var deps []int
				if s > 0 {
					if (s-1)%ranks == r {
						deps = append(deps, at[ref{RunForward, s - 1, o.mb}])
					} else {
						deps = append(deps, at[ref{RecvActivation, s, o.mb}])
					}
				}
				f := add(Action{Kind: RunForward, Stage: s, Microbatch: o.mb, Peer: -1, Deps: deps})
				if s+1 < stages && (s+1)%ranks != r {
					add(Action{Kind: SendActivation, Stage: s, Microbatch: o.mb, Peer: (s + 1) % ranks, Deps: []int{f}})
				}
				continue
			}
			deps := []int{at[ref{RunForward, s, o.mb}]}
			if s+1 < stages {
				if (s+1)%ranks == r {
					deps = append(deps, at[ref{RunBackward, s + 1, o.mb}])
				} else {
					deps = append(deps, at[ref{RecvGradient, s, o.mb}])
				}
				// The output the forward sent must be on its way before the
				// stage may let it go.
				if i, ok := at[ref{SendActivation, s, o.mb}]; ok {
					deps = append(deps, i)
				}
			}
			b := add(Action{Kind: RunBackward, Stage: s, Microbatch: o.mb, Peer: -1, Deps: deps})
			if s > 0 && (s-1)%ranks != r {
				add(Action{Kind: SendGradient, Stage: s, Microbatch: o.mb, Peer: (s - 1) % ranks, Deps: []int{b}})
			}
		}
		plan[r] = acts
	}
	return plan
}
