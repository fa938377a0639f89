package main

import (
	"math"

	"github.com/ringo-ml/ringo/collective"
)

// The check: every rank fills its buffer with small integers that depend on
// its rank and the element's index, periodic in the index, so that the
// expected result of every element is computed exactly (in T's own
// arithmetic, so integer wrap-around is expected too) from a short table.

// period of value's pattern in the index, per reduction.
func period(op collective.Op) int {
	switch op {
	case collective.Prod:
		return 3
	case collective.Min, collective.Max:
		return 13
	}
	return 7
}

// value is rank r's input at index i of a reduction.
func value[T collective.Elem](op collective.Op, r, i int) T {
	switch op {
	case collective.Prod:
		if (r+i)%3 == 0 {
			return 2
		}
		return 1
	case collective.Min, collective.Max:
		return T((r*5 + i*3) % 13)
	}
	return T((r*3 + i) % 7)
}

// gathered is rank r's input at index i of a collective that only moves data.
func gathered[T collective.Elem](r, i int) T { return T((r*7 + i) % 101) }

// exchanged is what rank src sends to rank dst at index i of its block (AllToAll).
func exchanged[T collective.Elem](src, dst, i int) T { return T((src*7 + dst*3 + i) % 101) }

// sentinel is what receive buffers hold before a call (never a gathered value).
const sentinel = 127

func isFloat[T collective.Elem]() bool {
	var z T
	switch any(z).(type) {
	case float32, float64:
		return true
	}
	return false
}

// expected is the reduction of value over n ranks for each index modulo period.
func expected[T collective.Elem](op collective.Op, n int) []T {
	p := period(op)
	want := make([]T, p)
	for i := range p {
		acc := value[T](op, 0, i)
		for r := 1; r < n; r++ {
			v := value[T](op, r, i)
			switch op {
			case collective.Prod:
				acc *= v
			case collective.Min:
				acc = min(acc, v)
			case collective.Max:
				acc = max(acc, v)
			default:
				acc += v
			}
		}
		if op == collective.Avg {
			acc /= T(n)
		}
		want[i] = acc
	}
	return want
}

// same compares a result with its expected value: exactly, except for Avg,
// whose one division may round (differently if done as a multiplication).
func same[T collective.Elem](op collective.Op, got, want T) bool {
	if got == want {
		return true
	}
	if op != collective.Avg || !isFloat[T]() {
		return false
	}
	g, w := float64(got), float64(want)
	eps := 1.2e-7 // float32
	var z T
	if _, ok := any(z).(float64); ok {
		eps = 2.3e-16
	}
	return math.Abs(g-w) <= 4*eps*math.Abs(w)
}

func (b *bench[T]) fill() {
	rank := b.c.Rank()
	switch b.o.collective {
	case "allreduce", "reducescatter", "reduce":
		for i := range b.send {
			b.send[i] = value[T](b.op, rank, i)
		}
		for i := range b.recv {
			b.recv[i] = sentinel
		}
	case "alltoall":
		m := len(b.send) / b.c.Size()
		for i := range b.send {
			b.send[i] = exchanged[T](rank, i/m, i%m)
		}
		for i := range b.recv {
			b.recv[i] = sentinel
		}
	case "scatter":
		m := len(b.recv)
		for i := range b.send {
			b.send[i] = gathered[T](i/m, i%m)
		}
		for i := range b.recv {
			b.recv[i] = sentinel
		}
	case "allgather", "gather":
		for i := range b.send {
			b.send[i] = gathered[T](rank, i)
		}
		for i := range b.recv {
			b.recv[i] = sentinel
		}
	case "broadcast":
		for i := range b.send {
			if rank == b.o.root {
				b.send[i] = gathered[T](rank, i)
			} else {
				b.send[i] = sentinel
			}
		}
	}
}

// verify counts this rank's wrong elements after one call on fill's buffers.
func (b *bench[T]) verify() int64 {
	rank, n := b.c.Rank(), b.c.Size()
	var wrong int64
	switch b.o.collective {
	case "allreduce":
		want := expected[T](b.op, n)
		p := len(want)
		rel := b.lossyTolerance() // > 0: bf16/fp16 on the wire round the result
		for i, v := range b.send {
			if !same(b.op, v, want[i%p]) && !(rel > 0 && within(v, want[i%p], rel)) {
				wrong++
			}
		}
	case "reducescatter":
		want := expected[T](b.op, n)
		p, base := len(want), rank*len(b.recv)
		for j, v := range b.recv {
			if !same(b.op, v, want[(base+j)%p]) {
				wrong++
			}
		}
	case "reduce":
		if rank != b.o.root {
			break // recv is not used on other ranks
		}
		want := expected[T](b.op, n)
		for i, v := range b.recv {
			if !same(b.op, v, want[i%len(want)]) {
				wrong++
			}
		}
	case "allgather", "gather":
		if b.o.collective == "gather" && rank != b.o.root {
			break
		}
		m := len(b.send)
		for i, v := range b.recv {
			if v != gathered[T](i/m, i%m) {
				wrong++
			}
		}
	case "scatter":
		for j, v := range b.recv {
			if v != gathered[T](rank, j) {
				wrong++
			}
		}
	case "alltoall":
		m := len(b.recv) / n
		for i, v := range b.recv {
			if v != exchanged[T](i/m, rank, i%m) {
				wrong++
			}
		}
	case "broadcast":
		for i, v := range b.send {
			if v != gathered[T](b.o.root, i) {
				wrong++
			}
		}
	}
	return wrong
}

// steady sets the buffers to values that repeated calls keep finite and
// unchanged (zeros for Sum and Avg, ones for Prod), so that timing never
// meets overflow or denormals.
func (b *bench[T]) steady() {
	if b.o.collective != "allreduce" {
		return
	}
	if b.o.data != "zeros" {
		b.pattern() // what compression sees matters: see data.go
		return
	}
	switch b.op {
	case collective.Sum, collective.Avg:
		clear(b.send)
	case collective.Prod:
		for i := range b.send {
			b.send[i] = 1
		}
	}
}
