package shard

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/rankdesc"
	"github.com/ringo-ml/ringo/parallel"
)

// What a rank found comparing its units and options with rank 0's
// (verdict codes, worst first).
const (
	agreed = iota
	invalid
	optionDiffers // index: the option
	unitDiffers   // index: unit·2^20 + parameter (or the count, past the end)
)

var optionNames = [...]string{"Strategy", "Prefetch", "MaxGathered", "GroupSize"}

// agree checks that every rank has the same units and options as rank 0,
// and returns the same error on every rank if not. Every rank makes the
// same calls whatever its units: rank 0 broadcasts its description, every
// rank compares and AllGathers its verdict, and every rank reads the same
// table. The table also carries each rank's place on its host, from which
// every rank finds the same default Hybrid group (the ranks of one host):
// agree returns it, or an error, when opts' GroupSize is 0 under Hybrid.
func agree(ctx context.Context, comm *collective.Comm, units [][]*parallel.Param, opts Options, local error) (group int, err error) {
	desc := describe(units, opts)
	if err := rankdesc.Broadcast(ctx, comm, &desc); err != nil {
		return 0, err
	}
	root := parseDescription(desc)
	const width = 5 // verdict, its two details, LocalSize, LocalRank
	mine := []int64{agreed, 0, 0, int64(comm.LocalSize()), int64(comm.LocalRank())}
	switch {
	case local != nil:
		mine[0] = invalid
	default:
		if i := root.optionDiff(opts); i >= 0 {
			mine[0], mine[1] = optionDiffers, int64(i)
		} else if u, j := root.unitDiff(units); u >= 0 {
			mine[0], mine[1], mine[2] = unitDiffers, int64(u), int64(j)
		}
	}
	table := make([]int64, width*comm.Size())
	if err := collective.AllGather(ctx, comm, mine, table); err != nil {
		return 0, err
	}
	worst := -1
	for r := range comm.Size() {
		if table[width*r] != agreed && (worst < 0 || table[width*r] < table[width*worst]) {
			worst = r
		}
	}
	if worst < 0 {
		if opts.Strategy == Hybrid && opts.GroupSize == 0 {
			return hostGroup(table, width)
		}
		return opts.GroupSize, nil
	}
	self := worst == comm.Rank()
	code, a, b := table[width*worst], int(table[width*worst+1]), int(table[width*worst+2])
	switch code {
	case invalid:
		if local != nil {
			return 0, local // this rank's own problem says most
		}
		return 0, fmt.Errorf("%w: rank %d's units or options are invalid (its error says how)", collective.ErrInvalid, worst)
	case optionDiffers:
		err := fmt.Errorf("%w: rank %d's Options.%s differs from rank 0's (%s)", collective.ErrMismatch, worst, optionNames[a], root.option(a))
		if self {
			err = fmt.Errorf("%w; this rank's is %s", err, description{opts: opts}.option(a))
		}
		return 0, err
	}
	err = fmt.Errorf("%w: rank %d's units differ from rank 0's at unit %d: %s", collective.ErrMismatch, worst, a, root.unitText(a, b))
	if self {
		err = fmt.Errorf("%w; this rank's %s", err, describeParam(units, a, b))
	}
	return 0, err
}

// hostGroup is Hybrid's default group size, the ranks of one host, from
// every rank's LocalSize and LocalRank (at columns 3 and 4 of table's rows
// of width): the same answer, or the same error, on every rank. The groups
// are consecutive ranks, so the hosts must be: every host of rank 0's
// size, and each rank's local rank its rank modulo that size (which,
// with equal sizes, makes every host a block of consecutive ranks).
func hostGroup(table []int64, width int) (int, error) {
	size := len(table) / width
	local := int(table[3])
	for r := range size {
		n, lr := int(table[width*r+3]), int(table[width*r+4])
		switch {
		case n != local:
			return 0, fmt.Errorf("%w: Hybrid's default group is a host's ranks, but the hosts run different numbers of ranks "+
				"(rank 0's host %d, rank %d's %d): set Options.GroupSize", collective.ErrInvalid, local, r, n)
		case lr != r%local:
			return 0, fmt.Errorf("%w: Hybrid's default group is a host's ranks, but the hosts' ranks are not consecutive "+
				"(rank %d is number %d on its host, where consecutive hosts of %d ranks would make it %d): set Options.GroupSize",
				collective.ErrInvalid, r, lr, local, r%local)
		}
	}
	return local, nil
}

type description struct {
	opts  Options
	units [][]paramDesc
}

type paramDesc struct {
	name string
	len  int
}

// describe encodes the options and, per unit, its parameters' names and
// lengths, in uvarints and length-prefixed strings.
func describe(units [][]*parallel.Param, o Options) []byte {
	b := binary.AppendUvarint(nil, uint64(o.Strategy))
	b = binary.AppendUvarint(b, uint64(o.Prefetch))
	b = binary.AppendUvarint(b, uint64(o.MaxGathered))
	b = binary.AppendUvarint(b, uint64(o.GroupSize))
	b = binary.AppendUvarint(b, uint64(len(units)))
	for _, ps := range units {
		b = binary.AppendUvarint(b, uint64(len(ps)))
		for _, p := range ps {
			var name string
			var n int
			if p != nil {
				name, n = p.Name, len(p.Data)
			}
			b = rankdesc.AppendString(b, name)
			b = binary.AppendUvarint(b, uint64(n))
		}
	}
	return b
}

// parseDescription decodes describe's bytes; what cannot be read describes
// nothing, which every rank then reports as a difference.
func parseDescription(b []byte) description {
	var d description
	r := rankdesc.NewReader(b)
	d.opts = Options{Strategy: Strategy(r.Uvarint()), Prefetch: int(r.Uvarint()), MaxGathered: int(r.Uvarint()), GroupSize: int(r.Uvarint())}
	nu := r.Uvarint()
	for u := uint64(0); u < nu && r.Err() == nil; u++ {
		np := r.Uvarint()
		var ps []paramDesc
		for j := uint64(0); j < np && r.Err() == nil; j++ {
			name := r.Str()
			n := r.Uvarint()
			ps = append(ps, paramDesc{name, int(n)})
		}
		d.units = append(d.units, ps)
	}
	return d
}

func (d description) option(i int) string {
	switch i {
	case 0:
		return d.opts.Strategy.String()
	case 1:
		return fmt.Sprint(d.opts.Prefetch)
	case 2:
		return fmt.Sprint(d.opts.MaxGathered)
	}
	if d.opts.GroupSize == 0 {
		return "0, a host's ranks"
	}
	return fmt.Sprint(d.opts.GroupSize)
}

func (d description) optionDiff(o Options) int {
	for i, same := range []bool{d.opts.Strategy == o.Strategy, d.opts.Prefetch == o.Prefetch, d.opts.MaxGathered == o.MaxGathered, d.opts.GroupSize == o.GroupSize} {
		if !same {
			return i
		}
	}
	return -1
}

// unitDiff is the first (unit, parameter) where units differ from d; a
// parameter index equal to a unit's length means that unit ends there, and
// a unit index equal to len(units) that the list does.
func (d description) unitDiff(units [][]*parallel.Param) (int, int) {
	for u := range max(len(d.units), len(units)) {
		if u >= len(d.units) || u >= len(units) {
			return u, 0
		}
		for j := range max(len(d.units[u]), len(units[u])) {
			if j >= len(d.units[u]) || j >= len(units[u]) || d.units[u][j].name != units[u][j].Name || d.units[u][j].len != len(units[u][j].Data) {
				return u, j
			}
		}
	}
	return -1, -1
}

// unitText says what rank 0 has at unit u, parameter j.
func (d description) unitText(u, j int) string {
	switch {
	case u >= len(d.units):
		return fmt.Sprintf("rank 0 has only %d units", len(d.units))
	case j >= len(d.units[u]):
		return fmt.Sprintf("rank 0's unit %d has only %d parameters", u, len(d.units[u]))
	}
	p := d.units[u][j]
	return fmt.Sprintf("rank 0's parameter #%d is %q with %d values", j, p.name, p.len)
}

func describeParam(units [][]*parallel.Param, u, j int) string {
	switch {
	case u >= len(units):
		return fmt.Sprintf("has only %d units", len(units))
	case j >= len(units[u]):
		return fmt.Sprintf("unit %d has only %d parameters", u, len(units[u]))
	}
	return fmt.Sprintf("is %q with %d values", units[u][j].Name, len(units[u][j].Data))
}

// The classes of error a verdict carries, so that errors.Is works on every
// rank, not only on the one that found the problem.
var verdictClasses = []error{nil, checkpoint.ErrCorrupt, checkpoint.ErrInvalid, checkpoint.ErrVersion, fs.ErrNotExist, collective.ErrMismatch, collective.ErrInvalid}

const verdictBytes = 512

// agreeOn makes every rank return an error if any rank's local is not nil:
// the ranks exchange their verdicts (class and message) with one
// AllGather, and each returns its own error, or, if it had none, one that
// names the lowest failing rank and its message, of the same class. what
// says what was being done ("loading checkpoint x"). A failed exchange
// (a lost rank) is returned as it is.
func agreeOn(ctx context.Context, comm *collective.Comm, local error, what string) error {
	mine := make([]byte, verdictBytes)
	if local != nil {
		mine[0] = 1
		for i, class := range verdictClasses {
			if class != nil && errors.Is(local, class) {
				mine[1] = byte(i)
				break
			}
		}
		n := copy(mine[4:], local.Error())
		binary.LittleEndian.PutUint16(mine[2:], uint16(n))
	}
	all := make([]byte, verdictBytes*comm.Size())
	if err := collective.AllGather(ctx, comm, mine, all); err != nil {
		return errors.Join(local, err)
	}
	if local != nil {
		return local
	}
	var failed []int
	for r := range comm.Size() {
		if all[r*verdictBytes] != 0 {
			failed = append(failed, r)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	v := all[failed[0]*verdictBytes:][:verdictBytes]
	class := errors.New("failed")
	if int(v[1]) < len(verdictClasses) && verdictClasses[v[1]] != nil {
		class = verdictClasses[v[1]]
	}
	n := min(int(binary.LittleEndian.Uint16(v[2:])), verdictBytes-4)
	others := ""
	if len(failed) > 1 {
		others = fmt.Sprintf(" (ranks %v failed)", failed)
	}
	return fmt.Errorf("%s: %w on rank %d%s: %s", what, class, failed[0], others, v[4:4+n])
}
