// Package link is the contract between ringo's transports and its
// algorithms: a Link is a connection to one peer as a schedule uses it, and a
// Reducer is the element-wise reduction a schedule applies. Transports
// (transport.Link, and any a user writes) implement Link; algorithms (package
// ring, and ringo's internal ones) run over Links and Reducers they are
// given.
//
// Why a package of its own: both sides must import the contract, and neither
// may import the other for it. Had it stayed in package ring, every other
// algorithm would import ring for two interfaces (an algorithm reaching
// sideways into another), and a transport that wanted to check it satisfies
// the contract would import an algorithm. Why public: ring's public API (a
// ring over links a user supplies) takes Links and Reducers, so their types
// must be nameable outside the module. It imports nothing of ringo, so every
// layer may import it.
package link

// Elem is the set of element types links carry and reducers reduce: the
// integers int8, uint8, int32, uint32, int64 and uint64, and the floats
// float32 and float64, in host byte order.
type Elem interface {
	int8 | uint8 | int32 | uint32 | int64 | uint64 | float32 | float64
}

// Float is the floating-point subset of Elem: the types an average is
// defined for.
type Float interface {
	float32 | float64
}

// Link is a connection to one peer, as a schedule uses it: frames in order,
// each received into a buffer posted for it in advance.
//
// A schedule calls Post and Wait from one goroutine and Send and Flush from
// one goroutine; a bidirectional schedule may use the receive side and the
// send side of the same Link from two goroutines at once.
type Link interface {
	// Post asks for the next frame from the peer to be received into dst.
	// The frame must be exactly len(dst) bytes long; a frame of another
	// length fails the Wait that completes it.
	Post(dst []byte) error
	// Wait waits for the oldest posted receive.
	Wait() error
	// Send queues src as the next frame; src must stay unchanged until
	// Flush(ticket) returns.
	Send(src []byte) (ticket uint64, err error)
	// Flush waits until every frame up to ticket has been written.
	Flush(ticket uint64) error
}

// Reducer is the reduction a schedule applies: an element-wise operation
// that is associative and commutative, such as a sum or a maximum.
//
// Schedules reduce each element on one rank only and copy the result to the
// others, so every rank ends with the same bits provided ReduceTo computes
// the same function on every rank. Package ring makes the reducers of the
// usual operations (ring.Sum, ring.Prod, ring.Min, ring.Max, ring.Avg), with
// vector kernels where the CPU has them.
type Reducer[T Elem] struct {
	// ReduceTo sets dst[i] = op(a[i], b[i]) for i < len(dst); a and b are at
	// least as long as dst. dst may be a or b exactly, never a part of one.
	ReduceTo func(dst, a, b []T)
	// Div, if set, divides each final value by the number of ranks n, once,
	// on the rank that completes it (an average is a sum and then Div).
	Div func(dst []T, n int)
}
