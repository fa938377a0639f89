package collective

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ringo-ml/ringo/transport"
)

// recentOps is how many calls the flight recorder keeps.
const recentOps = 16

// Status is a snapshot of a communicator: what it is doing, what each peer
// last sent, and the calls it made last. It answers "who is missing?".
type Status struct {
	Rank, Size int
	// Seq is the number of calls begun; Running is the call in progress
	// ("" if none) and RunningFor how long it has run.
	Seq        uint64
	Running    string
	RunningFor time.Duration
	// Aborted is the cause of the abort, if any.
	Aborted error
	// Peers is, per other rank, the operation number of its last data frame
	// here and when this rank last heard from it (data or heartbeat).
	Peers []PeerStatus
	// Recent are the last calls, oldest first.
	Recent []CallRecord
}

// PeerStatus is what one rank knows of another.
type PeerStatus struct {
	Rank      int
	LastOp    uint64
	LastHeard time.Time
}

// CallRecord is one call in the flight recorder.
type CallRecord struct {
	Op    uint64 // operation number
	Call  string // e.g. "AllReduce(float32, count=1024, Sum)"
	Start time.Time
	Took  time.Duration // zero while running
	Err   bool
}

// recorder keeps the last calls without allocating: records are fixed-size
// values, rendered to strings only when Status is asked for.
type recorder struct {
	mu      sync.Mutex
	ops     [recentOps]callRaw
	running bool
}

type callRaw struct {
	op    uint64
	sig   transport.Signature
	start time.Time
	took  time.Duration
	err   bool
}

func (r *recorder) begin(op uint64, sig transport.Signature, now time.Time) {
	r.mu.Lock()
	r.ops[op%recentOps] = callRaw{op: op, sig: sig, start: now}
	r.running = true
	r.mu.Unlock()
}

func (r *recorder) end(op uint64, failed bool) {
	r.mu.Lock()
	c := &r.ops[op%recentOps]
	c.took, c.err = time.Since(c.start), failed
	r.running = false
	r.mu.Unlock()
}

// Status returns a snapshot of the communicator; it may be called from any
// goroutine, also while a call is blocked.
func (c *Comm) Status() Status {
	st := Status{Rank: c.rank, Size: c.size, Aborted: c.Err()}
	c.rec.mu.Lock()
	var newest uint64
	for _, r := range c.rec.ops {
		newest = max(newest, r.op)
	}
	st.Seq = newest
	for op := max(1, newest-min(newest, recentOps-1)); op <= newest; op++ {
		r := c.rec.ops[op%recentOps]
		if r.op != op {
			continue
		}
		st.Recent = append(st.Recent, CallRecord{Op: r.op, Call: describe(r.sig), Start: r.start, Took: r.took, Err: r.err})
	}
	if c.rec.running && newest > 0 {
		r := c.rec.ops[newest%recentOps]
		st.Running, st.RunningFor = describe(r.sig), time.Since(r.start)
	}
	c.rec.mu.Unlock()
	for p, l := range c.links {
		if l != nil {
			heard, op := l.LastHeard()
			st.Peers = append(st.Peers, PeerStatus{Rank: p, LastOp: op, LastHeard: heard})
		}
	}
	return st
}

// String renders the status for logs.
func (s Status) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rank %d of %d, %d calls", s.Rank, s.Size, s.Seq)
	if s.Running != "" {
		fmt.Fprintf(&b, ", running %s for %v", s.Running, s.RunningFor.Round(time.Millisecond))
	}
	b.WriteString("; peers:")
	now := time.Now()
	for _, p := range s.Peers {
		fmt.Fprintf(&b, " %d(op #%d, heard %v ago)", p.Rank, p.LastOp, now.Sub(p.LastHeard).Round(time.Millisecond))
	}
	b.WriteString("; recent:")
	for _, r := range s.Recent {
		state := r.Took.Round(time.Microsecond).String()
		switch {
		case r.Err:
			state = "failed"
		case r.Took == 0:
			state = "running"
		}
		fmt.Fprintf(&b, " #%d %s %s;", r.Op, r.Call, state)
	}
	return b.String()
}

// lines renders the status one fact a line: the communicator and its call,
// each peer, each recent call.
func (s Status) lines() []string {
	head := fmt.Sprintf("rank %d of %d, %d calls", s.Rank, s.Size, s.Seq)
	if s.Running != "" {
		head += fmt.Sprintf(", running %s for %v", s.Running, s.RunningFor.Round(time.Millisecond))
	}
	lines := []string{head}
	now := time.Now()
	for _, p := range s.Peers {
		lines = append(lines, fmt.Sprintf("peer rank %d: last op #%d, heard %v ago", p.Rank, p.LastOp, now.Sub(p.LastHeard).Round(time.Millisecond)))
	}
	for _, r := range s.Recent {
		state := "took " + r.Took.Round(time.Microsecond).String()
		switch {
		case r.Err:
			state = "failed"
		case r.Took == 0:
			state = "running"
		}
		lines = append(lines, fmt.Sprintf("call #%d %s: %s", r.Op, r.Call, state))
	}
	return lines
}

// logStatus logs the status at debug level, one record a line, each
// starting with title: readable as a table, and out of the way of the one
// line that says what went wrong unless debug logs are asked for.
func (c *Comm) logStatus(title string) {
	if !c.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	for _, line := range c.Status().lines() {
		c.log.Debug(title + ": " + line)
	}
}
