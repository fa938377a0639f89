package ps

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/rankdesc"
	"github.com/ringo-ml/ringo/parallel"
)

// job is what a server or a worker knows of the whole job once it is set
// up: the roles, the layout and its pair communicators.
type job struct {
	world            *collective.Comm
	opts             Options
	servers, workers int
	layout           layout
	// pairs are this rank's communicators with each rank of the other role
	// (a server's by worker, a worker's by server). In each the server is
	// rank 0 and the worker rank 1. They are what makes a lost worker
	// survivable: a communicator aborts as a whole when any of its ranks is
	// lost, so the world communicator (unused after setup) and the lost
	// rank's pairs abort, while every other pair keeps working.
	pairs []*collective.Comm
}

// Tags of the messages within a pair.
const (
	tagHeader = 1 // a header, on either side
	tagGrad   = 2 // a push's gradients, worker to server
	tagValues = 3 // a pull's values, server to worker
	tagInit   = 4 // the initial values, first worker to server, once
)

// Header kinds. Every message a side writes starts with a header; a push,
// a pull's answer and the initial values also have a payload.
const (
	kindKeepAlive = iota + 1 // nothing to say (server: the clocks)
	kindPush                 // worker: gradients follow
	kindPull                 // worker: send me the values
	kindPushPull             // worker: gradients follow; then send me the values
	kindBye                  // either: the last message
	kindValues               // server: the values follow
)

// workerHeaderLen is a worker's header: kind, clock.
const workerHeaderLen = 2

// serverHeaderLen is a server's header: kind, version, then every worker's
// clock as the server knows it.
func serverHeaderLen(workers int) int { return 2 + workers }

// Verdicts of the agreement.
const (
	agreed = iota
	invalid
	differs
)

// setup checks that every rank has the same options and parameter names
// and lengths as rank 0, and makes the pair communicators. It is a
// collective call on world; every rank makes the same calls whatever it
// finds, so a bad argument on one rank fails every rank instead of hanging
// the others.
func setup(ctx context.Context, world *collective.Comm, params []*parallel.Param, opts Options, asServer bool) (*job, error) {
	j := &job{world: world, opts: opts, servers: opts.Servers, workers: world.Size() - opts.Servers}
	localErr := checkLocal(world, params, opts, asServer)
	verdict := int64(agreed)
	if localErr != nil {
		verdict = invalid
	}
	desc := describe(opts, params)
	theirs := desc // rank 0's, once broadcast
	if err := rankdesc.Broadcast(ctx, world, &theirs); err != nil {
		return nil, fmt.Errorf("ps: setup: %w", err)
	}
	if verdict == agreed && string(theirs) != string(desc) {
		verdict = differs
		localErr = fmt.Errorf("%w: rank %d's %s", collective.ErrMismatch, world.Rank(), difference(theirs, desc))
	}
	verdicts := make([]int64, world.Size())
	if err := collective.AllGather(ctx, world, []int64{verdict}, verdicts); err != nil {
		return nil, fmt.Errorf("ps: setup: %w", err)
	}
	if localErr != nil {
		return nil, fmt.Errorf("ps: rank %d: %w", world.Rank(), localErr)
	}
	for r, v := range verdicts {
		switch v {
		case invalid:
			return nil, fmt.Errorf("ps: rank %d: %w: rank %d's parameters or options are invalid (its own error says how)", world.Rank(), collective.ErrInvalid, r)
		case differs:
			return nil, fmt.Errorf("ps: rank %d: %w: rank %d's parameters or options differ from rank 0's (its own error says how)", world.Rank(), collective.ErrMismatch, r)
		}
	}
	j.layout = newLayout(params, j.servers)
	pairs, err := j.connectPairs(ctx)
	if err != nil {
		return nil, err
	}
	j.pairs = pairs
	return j, nil
}

// connectPairs makes a communicator for every (server, worker) pair with
// max(S, W) Splits of the world: in round r, server s pairs with worker
// (s + r) mod max(S, W), so each rank is in at most one pair per round and
// every pair comes up exactly once.
func (j *job) connectPairs(ctx context.Context) ([]*collective.Comm, error) {
	self := j.world.Rank()
	isServer := self < j.servers
	var pairs []*collective.Comm
	if isServer {
		pairs = make([]*collective.Comm, j.workers)
	} else {
		pairs = make([]*collective.Comm, j.servers)
	}
	rounds := max(j.servers, j.workers)
	for r := range rounds {
		color, key, peer := collective.Undefined, 0, -1
		if isServer {
			if w := (self + r) % rounds; w < j.workers {
				color, key, peer = self, 0, w
			}
		} else {
			w := self - j.servers
			if s := ((w-r)%rounds + rounds) % rounds; s < j.servers {
				color, key, peer = s, 1, s
			}
		}
		c, err := j.world.Split(ctx, color, key)
		if err != nil {
			closeAll(pairs)
			return nil, fmt.Errorf("ps: connecting the server-worker pairs: %w", err)
		}
		if peer >= 0 {
			pairs[peer] = c
		}
	}
	return pairs, nil
}

func closeAll(comms []*collective.Comm) {
	for _, c := range comms {
		if c != nil {
			_ = c.Close()
		}
	}
}

// checkLocal checks this rank's arguments on their own.
func checkLocal(world *collective.Comm, params []*parallel.Param, opts Options, asServer bool) error {
	isServer := world.Rank() < opts.Servers
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{collective.ErrInvalid}, args...)...))
	}
	switch {
	case opts.Servers < 1 || opts.Servers >= world.Size():
		bad("Options.Servers = %d: want 1 to %d on a communicator of %d, leaving at least one worker", opts.Servers, world.Size()-1, world.Size())
	case asServer && !isServer:
		bad("NewServer on rank %d, a worker (servers are ranks 0 to %d)", world.Rank(), opts.Servers-1)
	case !asServer && isServer:
		bad("NewWorker on rank %d, a server (workers are ranks %d to %d)", world.Rank(), opts.Servers, world.Size()-1)
	}
	switch c := opts.Consistency; {
	case c.kind == 0:
		bad("Options.Consistency is not set: choose Sync, Async or BoundedStaleness(s)")
	case c.kind == sspKind && c.staleness < 0:
		bad("BoundedStaleness(%d): the bound cannot be negative", c.staleness)
	case c.kind == syncKind && opts.AllowWorkerLoss:
		bad("AllowWorkerLoss under Sync: a synchronous step needs every worker's gradients")
	}
	if opts.ChunkBytes < 0 {
		bad("Options.ChunkBytes = %d is negative", opts.ChunkBytes)
	}
	if asServer && opts.Optimizer == nil {
		bad("Options.Optimizer is nil: the servers need an update rule")
	}
	if len(params) == 0 {
		bad("no parameters")
	}
	seen := make(map[string]int, len(params))
	for i, p := range params {
		if p == nil {
			bad("parameter #%d is nil", i)
			continue
		}
		if p.Name == "" {
			bad("parameter #%d has no name", i)
		}
		if !asServer && len(p.Grad) != len(p.Data) {
			bad("parameter #%d %q has %d values but %d gradients", i, p.Name, len(p.Data), len(p.Grad))
		}
		if k, ok := seen[p.Name]; ok {
			bad("parameters #%d and #%d are both called %q", k, i, p.Name)
		}
		seen[p.Name] = i
	}
	return errors.Join(errs...)
}

// describe encodes what every rank must agree on: the options that shape
// the job and each parameter's name and length.
func describe(opts Options, params []*parallel.Param) []byte {
	b := binary.AppendVarint(nil, int64(opts.Servers))
	b = binary.AppendVarint(b, int64(opts.Consistency.kind))
	b = binary.AppendVarint(b, int64(opts.Consistency.staleness))
	allow := int64(0)
	if opts.AllowWorkerLoss {
		allow = 1
	}
	b = binary.AppendVarint(b, allow)
	b = binary.AppendVarint(b, int64(opts.keepAlive()))
	b = binary.AppendVarint(b, int64(opts.chunkLen()))
	b = binary.AppendVarint(b, int64(len(params)))
	for _, p := range params {
		if p == nil {
			b = binary.AppendVarint(b, -1)
			continue
		}
		b = binary.AppendVarint(b, int64(len(p.Name)))
		b = append(b, p.Name...)
		b = binary.AppendVarint(b, int64(len(p.Data)))
	}
	return b
}

// difference says how mine differs from rank 0's description.
func difference(rank0, mine []byte) string {
	a, b := decode(rank0), decode(mine)
	for i, name := range optionNames {
		if a.opts[i] != b.opts[i] {
			return fmt.Sprintf("Options.%s differs from rank 0's", name)
		}
	}
	for i := range min(len(a.params), len(b.params)) {
		if a.params[i] != b.params[i] {
			return fmt.Sprintf("parameter #%d is %s; rank 0's is %s", i, b.params[i], a.params[i])
		}
	}
	return fmt.Sprintf("list has %d parameters; rank 0's has %d", len(b.params), len(a.params))
}

var optionNames = [...]string{"Servers", "Consistency", "Consistency", "AllowWorkerLoss", "KeepAlive", "ChunkBytes", "(number of parameters)"}

type description struct {
	opts   [len(optionNames)]int64
	params []string
}

func decode(b []byte) description {
	var d description
	next := func() int64 {
		v, n := binary.Varint(b)
		if n <= 0 {
			b = nil
			return 0
		}
		b = b[n:]
		return v
	}
	for i := range d.opts {
		d.opts[i] = next()
	}
	for range d.opts[len(d.opts)-1] {
		n := next()
		if n < 0 || int(n) > len(b) {
			d.params = append(d.params, "nil")
			continue
		}
		name := string(b[:n])
		b = b[n:]
		d.params = append(d.params, fmt.Sprintf("%q (%d values)", name, next()))
	}
	return d
}
