package ps

import "github.com/ringo-ml/ringo/parallel"

// Slice is a run of one parameter's elements that one server holds.
type Slice struct {
	Server int
	Param  string // the parameter's name
	Index  int    // the parameter's position in the list
	Lo, Hi int    // its elements [Lo, Hi)
	// Offset is where the run starts in the server's own vector.
	Offset int
}

// Layout is the key slicer: it lays the parameters end to end, in list
// order, as one flat vector of Ψ elements, and gives server s the elements
// [s·Ψ/S, (s+1)·Ψ/S). Every server holds Ψ/S elements (give or take one),
// whatever the sizes: a parameter bigger than that is split across
// servers, and a small one is cut only where a server's share ends. Each
// server's share is one contiguous run, so a push or a pull is one message
// per server.
//
// The slices are listed by server, then in parameter order.
func Layout(params []*parallel.Param, servers int) []Slice {
	l := newLayout(params, servers)
	var out []Slice
	for s, pieces := range l.pieces {
		for _, p := range pieces {
			out = append(out, Slice{Server: s, Param: params[p.param].Name, Index: p.param, Lo: p.lo, Hi: p.hi, Offset: p.offset})
		}
	}
	return out
}

// layout is Layout in the form the worker and server use.
type layout struct {
	bounds []int     // server s holds flat elements [bounds[s], bounds[s+1])
	pieces [][]piece // by server
}

type piece struct {
	param  int
	lo, hi int // elements of the parameter
	offset int // in the server's vector
}

func newLayout(params []*parallel.Param, servers int) layout {
	total := 0
	for _, p := range params {
		total += len(p.Data)
	}
	l := layout{bounds: make([]int, servers+1), pieces: make([][]piece, servers)}
	for s := range servers + 1 {
		// 64-bit arithmetic: total·s may exceed an int32's range but not an int's.
		l.bounds[s] = total * s / servers
	}
	start := 0 // flat index of the parameter's first element
	for i, p := range params {
		end := start + len(p.Data)
		for s := range servers {
			lo, hi := max(start, l.bounds[s]), min(end, l.bounds[s+1])
			if lo < hi {
				l.pieces[s] = append(l.pieces[s], piece{param: i, lo: lo - start, hi: hi - start, offset: lo - l.bounds[s]})
			}
		}
		start = end
	}
	return l
}

// size is server s's number of elements.
func (l layout) size(s int) int { return l.bounds[s+1] - l.bounds[s] }

// gather copies server s's share of the parameters' vectors (what picks,
// e.g. the gradients) into dst.
func (l layout) gather(s int, params []*parallel.Param, pick func(*parallel.Param) []float32, dst []float32) {
	for _, p := range l.pieces[s] {
		copy(dst[p.offset:p.offset+p.hi-p.lo], pick(params[p.param])[p.lo:p.hi])
	}
}

// scatter copies elements [from, to) of server s's vector, src, into the
// parameters' vectors.
func (l layout) scatter(s, from, to int, params []*parallel.Param, pick func(*parallel.Param) []float32, src []float32) {
	for _, p := range l.pieces[s] {
		a, b := max(from, p.offset), min(to, p.offset+p.hi-p.lo)
		if a < b {
			copy(pick(params[p.param])[p.lo+a-p.offset:p.lo+b-p.offset], src[a:b])
		}
	}
}

// chunks is how many chunks of at most chunkLen elements n elements make
// (one, empty, for none: every message still has its chunk).
func chunks(n, chunkLen int) int { return max(1, (n+chunkLen-1)/chunkLen) }

// chunkRange is chunk k of n elements.
func chunkRange(k, n, chunkLen int) (int, int) { return min(n, k*chunkLen), min(n, (k+1)*chunkLen) }

func data(p *parallel.Param) []float32 { return p.Data }
func grad(p *parallel.Param) []float32 { return p.Grad }
