package collective

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ringo-ml/ringo/internal/codec"
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/link"
	"github.com/ringo-ml/ringo/ring"
)

// AllReducer is an AllReduce of one buffer that is started again and again,
// as a training step reduces the same gradient buckets every step. Start
// is AllReduceAsync without its cost: no Work, goroutine or context is made
// per call, so a steady-state step allocates nothing. Like AllReduceAsync,
// Start takes the call's place in the communicator's issue order at once,
// on the caller's goroutine, and the call runs in the background.
//
// An AllReducer may also compress differently from its communicator
// (AllReducerOptions.Compression): data parallel training reduces its
// gradients in bf16 while the rest of the job's calls go uncompressed.
//
// Start, Wait and Close must not run concurrently with each other.
type AllReducer[T Elem] struct {
	c    *Comm
	buf  []T
	op   Op
	red  link.Reducer[T]
	kind codec.Kind       // the codec of this AllReducer's calls
	own  bool             // kind is its own, not the communicator's
	z    *ring.Compressed // its compressed ring (own kind), made on first use

	call    ticketCtx     // the context and ticket of the call in flight
	started bool          // Start was called and Wait was not
	start   chan struct{} // Start -> the goroutine
	done    chan error    // the goroutine -> Wait
	quit    chan struct{} // Close -> the goroutine
	exited  chan struct{}
	close   sync.Once
}

// AllReducerOptions tune an AllReducer.
type AllReducerOptions struct {
	// Compression is the codec of the calls (see Config.Compression): ""
	// means the communicator's; any other value, "none" included, overrides
	// it. Every rank must pass the same.
	Compression string
}

// NewAllReducer makes an AllReducer of buf (which must not be touched
// between Start and Wait) with op. It starts one goroutine, which Close
// ends.
func NewAllReducer[T Elem](c *Comm, buf []T, op Op, opts AllReducerOptions) (*AllReducer[T], error) {
	red, err := reducer[T](op)
	if err != nil {
		return nil, fmt.Errorf("ringo: NewAllReducer: %w", err)
	}
	a := &AllReducer[T]{
		c: c, buf: buf, op: op, red: red, kind: c.codec,
		start: make(chan struct{}), done: make(chan error, 1),
		quit: make(chan struct{}), exited: make(chan struct{}),
	}
	if opts.Compression != "" {
		if a.kind, err = parseCompression("AllReducerOptions.Compression", opts.Compression); err != nil {
			return nil, fmt.Errorf("ringo: NewAllReducer: %w", err)
		}
		a.own = true
	}
	go a.serve()
	return a, nil
}

// Start starts the AllReduce: it takes the call's place in the
// communicator's order now and runs it in the background. ctx governs the
// call as it governs AllReduce's. Wait must be called before the next
// Start.
func (a *AllReducer[T]) Start(ctx context.Context) error {
	if a.started {
		return fmt.Errorf("ringo: AllReducer.Start: %w", invalidf("started again before Wait"))
	}
	select {
	case <-a.quit:
		return fmt.Errorf("ringo: AllReducer.Start: %w", invalidf("the AllReducer is closed"))
	default:
	}
	a.started = true
	a.call.Context = ctx
	a.call.ticket = a.c.turn.take()
	a.start <- struct{}{}
	return nil
}

// Wait waits for the call Start started and returns its error. If ctx ends
// first, the call is abandoned: as for any abandoned call, Wait aborts the
// communicator (the ranks could otherwise no longer agree on which call is
// which), then waits for the call, which fails promptly, and returns ctx's
// cause with the call's error.
func (a *AllReducer[T]) Wait(ctx context.Context) error {
	if !a.started {
		return fmt.Errorf("ringo: AllReducer.Wait: %w", invalidf("Wait without Start"))
	}
	a.started = false
	select {
	case err := <-a.done:
		return err
	case <-ctx.Done():
	}
	cause := context.Cause(ctx)
	a.c.Abort(fmt.Errorf("rank %d abandoned an AllReduce(count=%d) while waiting for it: %w", a.c.rank, len(a.buf), cause))
	return errors.Join(cause, <-a.done)
}

// Close ends the AllReducer's goroutine. A call started and not waited for
// is abandoned unless it has already finished: as Comm.Close does with a
// call in flight, Close then aborts the communicator (its peers could never
// pair their calls with this rank's again) and waits for the call, which
// fails promptly. Close does not close the communicator. It is idempotent.
func (a *AllReducer[T]) Close() error {
	a.close.Do(func() {
		if a.started {
			select {
			case <-a.done:
			default:
				a.c.Abort(fmt.Errorf("rank %d closed an AllReducer during its AllReduce(count=%d)", a.c.rank, len(a.buf)))
				<-a.done
			}
			a.started = false
		}
		close(a.quit)
		<-a.exited
		if a.z != nil {
			a.z.Close()
		}
	})
	return nil
}

func (a *AllReducer[T]) serve() {
	defer close(a.exited)
	for {
		select {
		case <-a.start:
			a.done <- a.run(&a.call)
		case <-a.quit:
			return
		}
	}
}

// run is AllReduce with this AllReducer's codec (begin takes the ticket
// Start took, from ctx).
func (a *AllReducer[T]) run(ctx context.Context) error {
	c := a.c
	algo := c.allReduceAlgorithm(len(a.buf) * kernel.Size[T]())
	algo, comp := allReduceCodecOf[T](c, a.kind, algo, a.op)
	sig := signature[T](kindAllReduce, a.op, len(a.buf), int(comp))
	sig.Op |= uint8(algo) << 4
	if err := c.begin(ctx, sig); err != nil {
		return err
	}
	if comp == codec.None {
		return c.end(allReduce(c, algo, a.buf, a.red))
	}
	if !a.own {
		return c.end(allReduceCompressed(c, comp, a.buf, a.red))
	}
	if a.z == nil {
		z, err := ring.NewCompressed(c.ring, ring.Codec(comp))
		if err != nil {
			return c.end(fmt.Errorf("ringo: compression %v: %w", comp, err))
		}
		a.z = z
	}
	return c.end(ring.AllReduceCompressed(a.z, a.buf, a.red))
}

// allReduceCodecOf is allReduceCodec for the codec k rather than the
// communicator's: which calls compress follows the same rules.
func allReduceCodecOf[T Elem](c *Comm, k codec.Kind, algo algorithm, op Op) (algorithm, codec.Kind) {
	switch {
	case k == codec.None, c.size == 1:
		return algo, codec.None
	case k.Lossy() && (kernel.TypeOf[T]() != kernel.Float32 || op != Sum && op != Avg):
		return algo, codec.None
	case algo == algoRing, algo == algoBidir:
		return algo, k
	case (algo == algoRabenseifner || algo == algoHier) && c.algo == algoAuto:
		return algoRing, k
	}
	return algo, codec.None
}

// ticketCtx carries a call's ticket, taken when the call was issued (an
// AllReducer's Start, an async call), to the call. Value hands out a
// pointer to the ticket: boxing a pointer allocates nothing, where boxing
// the uint64 itself allocates 8 bytes per call. p2p says which turnstile
// the ticket is of: the communicator's, or a point-to-point channel's.
type ticketCtx struct {
	context.Context
	ticket uint64
	p2p    bool
}

func (t *ticketCtx) Value(key any) any {
	switch key.(type) {
	case ticketKey:
		if !t.p2p {
			return &t.ticket
		}
	case p2pTicketKey:
		if t.p2p {
			return &t.ticket
		}
	}
	return t.Context.Value(key)
}
