package collective

import (
	"fmt"

	"github.com/ringo-ml/ringo/internal/codec"
	"github.com/ringo-ml/ringo/internal/kernel"
	"github.com/ringo-ml/ringo/link"
	"github.com/ringo-ml/ringo/transport"
)

// Elem is the set of element types every collective accepts: int8, uint8,
// int32, uint32, int64, uint64, float32 and float64 (the types themselves,
// not types defined on them; the set is link.Elem, which every layer of
// ringo shares). Every rank of a call must use the same type: one that
// differs fails the call with ErrMismatch.
type Elem interface {
	link.Elem
}

// Op is a reduction.
type Op uint8

// The reductions. Sum, Prod, Min and Max accept every Elem type; Avg (the
// Sum divided by the number of ranks) only float32 and float64, and fails
// with ErrInvalid for the others. Integer Sum and Prod wrap around as Go's
// + and * do. Min and Max on floats follow Go's min and max: NaN wins, and
// -0 is below +0.
const (
	Sum Op = iota + 1
	Prod
	Min
	Max
	Avg
)

func (o Op) String() string {
	switch o {
	case Sum:
		return "Sum"
	case Prod:
		return "Prod"
	case Min:
		return "Min"
	case Max:
		return "Max"
	case Avg:
		return "Avg"
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

func reducer[T Elem](op Op) (link.Reducer[T], error) {
	kop := kernel.Sum
	switch op {
	case Sum, Avg:
	case Prod:
		kop = kernel.Prod
	case Min:
		kop = kernel.Min
	case Max:
		kop = kernel.Max
	default:
		return link.Reducer[T]{}, invalidf("unknown reduction %v", op)
	}
	k, _ := kernel.For[T](kop)
	red := link.Reducer[T]{ReduceTo: k.ReduceTo}
	if op == Avg {
		if red.Div = kernel.DivFunc[T](); red.Div == nil {
			return red, invalidf("Avg is defined for float32 and float64, not %v", kernel.TypeOf[T]())
		}
	}
	return red, nil
}

// kind names a collective on the wire.
type kind uint8

const (
	kindAllReduce kind = iota + 1
	kindReduceScatter
	kindAllGather
	kindBroadcast
	kindBarrier
	kindReduce
	kindGather
	kindScatter
	kindAllToAll
	kindAllGatherV
	kindAllToAllV
	kindSplit
	kindSendRecv // a Send matched with a Recv, on a point-to-point link
)

var kindNames = [...]string{"?", "AllReduce", "ReduceScatter", "AllGather", "Broadcast", "Barrier", "Reduce", "Gather", "Scatter", "AllToAll", "AllGatherV", "AllToAllV", "Split", "Send/Recv"}

func (k kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

func signature[T Elem](k kind, op Op, count int, root int) transport.Signature {
	return transport.Signature{Kind: uint8(k), DType: uint8(kernel.TypeOf[T]()), Op: uint8(op), Root: int32(root), Count: uint64(count)}
}

// describe renders a signature the way the user wrote the call.
func describe(s transport.Signature) string {
	k := kind(s.Kind)
	dt := kernel.DType(s.DType)
	switch k {
	case kindBarrier:
		return "Barrier()"
	case kindSplit:
		return "Split or Group"
	case kindSendRecv:
		return fmt.Sprintf("Send/Recv(%v, count=%d, tag=%d)", dt, s.Count, s.Root)
	case kindBroadcast:
		switch algorithm(s.Op >> 4) {
		case algoDoubling:
			return fmt.Sprintf("Broadcast(%v, count=%d, root=%d, tree)", dt, s.Count, s.Root)
		case algoRing:
			return fmt.Sprintf("Broadcast(%v, count=%d, root=%d, chain)", dt, s.Count, s.Root)
		case algoHier:
			return fmt.Sprintf("Broadcast(%v, count=%d, root=%d, hier)", dt, s.Count, s.Root)
		}
		return fmt.Sprintf("Broadcast(%v, count=%d, root=%d)", dt, s.Count, s.Root)
	case kindAllToAllV:
		return fmt.Sprintf("AllToAllV(%v)", dt)
	case kindAllGather, kindAllToAll, kindAllGatherV:
		if algorithm(s.Op>>4) == algoHier {
			return fmt.Sprintf("%v(%v, count=%d, hier)", k, dt, s.Count)
		}
		return fmt.Sprintf("%v(%v, count=%d)", k, dt, s.Count)
	case kindGather, kindScatter:
		return fmt.Sprintf("%v(%v, count=%d, root=%d)", k, dt, s.Count, s.Root)
	case kindReduce:
		return fmt.Sprintf("Reduce(%v, count=%d, %v, root=%d)", dt, s.Count, Op(s.Op&0xf), s.Root)
	}
	if k == kindAllReduce && s.Root != 0 { // the codec (Config.Compression)
		return fmt.Sprintf("AllReduce(%v, count=%d, %v, %v, compression=%v)", dt, s.Count, Op(s.Op&0xf), algorithm(s.Op>>4), codec.Kind(s.Root))
	}
	if algo := algorithm(s.Op >> 4); algo != algoAuto {
		return fmt.Sprintf("%v(%v, count=%d, %v, %v)", k, dt, s.Count, Op(s.Op&0xf), algo)
	}
	return fmt.Sprintf("%v(%v, count=%d, %v)", k, dt, s.Count, Op(s.Op&0xf))
}
