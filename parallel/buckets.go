package parallel

// assignBuckets groups the parameters into buckets in reverse order (the
// order backward produces their gradients): the first bucket holds up to
// first bytes, the others up to rest. A parameter bigger than its bucket's
// cap gets a bucket of its own. Every rank computes the same buckets from
// the same list and options (which NewDataParallel checks).
func assignBuckets(params []*Param, first, rest int) [][]int {
	var out [][]int
	var cur []int
	bytes, limit := 0, first
	for i := len(params) - 1; i >= 0; i-- {
		n := 4 * len(params[i].Data)
		if len(cur) > 0 && bytes+n > limit {
			out = append(out, cur)
			cur, bytes, limit = nil, 0, rest
		}
		cur = append(cur, i)
		bytes += n
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}
