package parallel

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/rankdesc"
)

// checkLocal fills in opts' defaults and checks this rank's parameters and
// options on their own; a problem is returned, not acted on, because every
// rank must still take part in agree.
func checkLocal(comm *collective.Comm, params []*Param, opts DataParallelOptions) (DataParallelOptions, error) {
	var err error
	switch {
	case opts.BucketBytes < 0:
		err = fmt.Errorf("%w: BucketBytes %d is negative", collective.ErrInvalid, opts.BucketBytes)
	case opts.FirstBucketBytes < 0:
		err = fmt.Errorf("%w: FirstBucketBytes %d is negative", collective.ErrInvalid, opts.FirstBucketBytes)
	}
	if opts.BucketBytes == 0 {
		opts.BucketBytes = DefaultBucketBytes
	}
	if opts.FirstBucketBytes == 0 {
		opts.FirstBucketBytes = DefaultFirstBucketBytes
	}
	if err == nil && opts.Compression != "" {
		// The communicator's parser is the one that counts.
		r, cerr := collective.NewAllReducer(comm, []float32(nil), collective.Avg, collective.AllReducerOptions{Compression: opts.Compression})
		if cerr != nil {
			err = fmt.Errorf("DataParallelOptions.Compression: %w", cerr)
		} else {
			r.Close()
		}
	}
	if err == nil {
		err = checkParams(params)
	}
	return opts, err
}

// checkParams checks a parameter list on its own.
func checkParams(params []*Param) error {
	if len(params) == 0 {
		return fmt.Errorf("%w: no parameters", collective.ErrInvalid)
	}
	seen := make(map[string]int, len(params))
	for i, p := range params {
		switch {
		case p == nil:
			return fmt.Errorf("%w: parameter #%d is nil", collective.ErrInvalid, i)
		case p.Name == "":
			return fmt.Errorf("%w: parameter #%d has no name", collective.ErrInvalid, i)
		case p.Grad != nil && len(p.Grad) != len(p.Data):
			return fmt.Errorf("%w: parameter #%d %q has %d values but %d gradients", collective.ErrInvalid, i, p.Name, len(p.Data), len(p.Grad))
		}
		if j, ok := seen[p.Name]; ok {
			return fmt.Errorf("%w: parameters #%d and #%d are both called %q", collective.ErrInvalid, j, i, p.Name)
		}
		seen[p.Name] = i
	}
	return nil
}

// What a rank found, comparing itself with rank 0 (verdict codes).
const (
	agreed     = iota
	invalid    // its own list or options are invalid
	optDiffers // an option differs; index: 0 BucketBytes, 1 FirstBucketBytes, 2 Compression
	parDiffers // parameter #index differs (or one list ends there)
)

var optionNames = [...]string{"BucketBytes", "FirstBucketBytes", "Compression"}

// agree checks that every rank has the same parameters and options as rank
// 0, and returns the same error on every rank if not. Every rank makes the
// same calls whatever its list: rank 0 broadcasts its description (length,
// then bytes), every rank compares and AllGathers its verdict, and every
// rank reads the same table of verdicts.
func agree(ctx context.Context, comm *collective.Comm, params []*Param, opts DataParallelOptions, local error) error {
	desc := describe(params, opts)
	if err := rankdesc.Broadcast(ctx, comm, &desc); err != nil {
		return err
	}
	root := parseDescription(desc)

	mine := []int64{agreed, 0}
	switch {
	case local != nil:
		mine = []int64{invalid, 0}
	case root.opts.BucketBytes != opts.BucketBytes:
		mine = []int64{optDiffers, 0}
	case root.opts.FirstBucketBytes != opts.FirstBucketBytes:
		mine = []int64{optDiffers, 1}
	case root.opts.Compression != opts.Compression:
		mine = []int64{optDiffers, 2}
	default:
		if i := firstDifference(root.params, params); i >= 0 {
			mine = []int64{parDiffers, int64(i)}
		}
	}
	table := make([]int64, 2*comm.Size())
	if err := collective.AllGather(ctx, comm, mine, table); err != nil {
		return err
	}

	// The worst verdict, by code then index then rank: every rank finds
	// the same one.
	worst := -1
	for r := range comm.Size() {
		c, i := table[2*r], table[2*r+1]
		if c == agreed {
			continue
		}
		if worst < 0 || c < table[2*worst] || c == table[2*worst] && i < table[2*worst+1] {
			worst = r
		}
	}
	if worst < 0 {
		return nil
	}
	code, i := table[2*worst], int(table[2*worst+1])
	self := worst == comm.Rank()
	switch code {
	case invalid:
		if self {
			return local
		}
		return fmt.Errorf("%w: rank %d's parameter list or options are invalid (its error says how)", collective.ErrInvalid, worst)
	case optDiffers:
		err := fmt.Errorf("%w: rank %d's DataParallelOptions.%s differs from rank 0's (%s)", collective.ErrMismatch, worst, optionNames[i], root.option(i))
		if self {
			err = fmt.Errorf("%w; this rank's is %s", err, description{opts: opts}.option(i))
		}
		return err
	}
	theirs := fmt.Sprintf("rank 0 has only %d parameters", len(root.params))
	if i < len(root.params) {
		theirs = fmt.Sprintf("rank 0's is %q with %d values", root.params[i].name, root.params[i].len)
	}
	err := fmt.Errorf("%w: rank %d's parameter #%d differs from rank 0's: %s", collective.ErrMismatch, worst, i, theirs)
	if self {
		if i < len(params) {
			err = fmt.Errorf("%w; this rank's is %q with %d values", err, params[i].Name, len(params[i].Data))
		} else {
			err = fmt.Errorf("%w; this rank has only %d", err, len(params))
		}
	}
	return err
}

// description is what agree compares: the options and, per parameter, its
// name and length.
type description struct {
	opts   DataParallelOptions
	params []paramDesc
}

type paramDesc struct {
	name string
	len  int
}

func (d description) option(i int) string {
	switch i {
	case 0:
		return fmt.Sprint(d.opts.BucketBytes)
	case 1:
		return fmt.Sprint(d.opts.FirstBucketBytes)
	}
	return fmt.Sprintf("%q", d.opts.Compression)
}

// describe encodes a description: BucketBytes, FirstBucketBytes as
// uvarints, the compression as a string, the parameter count, then each
// parameter's name and length (a string is a uvarint length and its bytes).
// A nil parameter is described as an empty name of length 0.
func describe(params []*Param, opts DataParallelOptions) []byte {
	b := binary.AppendUvarint(nil, uint64(opts.BucketBytes))
	b = binary.AppendUvarint(b, uint64(opts.FirstBucketBytes))
	b = rankdesc.AppendString(b, opts.Compression)
	b = binary.AppendUvarint(b, uint64(len(params)))
	for _, p := range params {
		var name string
		var n int
		if p != nil {
			name, n = p.Name, len(p.Data)
		}
		b = rankdesc.AppendString(b, name)
		b = binary.AppendUvarint(b, uint64(n))
	}
	return b
}

// parseDescription decodes describe's bytes. They come from rank 0 running
// this code, but a malformed description (another version of it) must not
// crash a rank: what cannot be read describes no parameter, which every
// rank then reports as a difference.
func parseDescription(b []byte) description {
	var d description
	r := rankdesc.NewReader(b)
	d.opts.BucketBytes = int(r.Uvarint())
	d.opts.FirstBucketBytes = int(r.Uvarint())
	d.opts.Compression = r.Str()
	n := r.Uvarint()
	for k := uint64(0); k < n && r.Err() == nil; k++ {
		name := r.Str()
		l := r.Uvarint()
		if r.Err() == nil {
			d.params = append(d.params, paramDesc{name, int(l)})
		}
	}
	return d
}

// firstDifference is the index of the first parameter where mine differs
// from root's description, or -1.
func firstDifference(root []paramDesc, mine []*Param) int {
	for i := range max(len(root), len(mine)) {
		if i >= len(root) || i >= len(mine) || root[i].name != mine[i].Name || root[i].len != len(mine[i].Data) {
			return i
		}
	}
	return -1
}
