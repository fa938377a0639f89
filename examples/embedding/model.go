package main

import (
	"context"
	"fmt"
	"math"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/shard"
)

// tables are the model's two embedding tables (0: users, 1: items), held
// one way or the other.
type tables interface {
	// lookup writes the rows of ids into out; collective.
	lookup(ctx context.Context, table int, ids []int64, out []float32) error
	// backward applies the rows' gradients (summed over the ranks, then
	// Adagrad on the touched rows); collective.
	backward(ctx context.Context, table int, ids []int64, grads []float32) error
	// bytesSent is the table traffic this rank has sent so far.
	bytesSent() int64
	// memory is the bytes of table values and optimizer state this rank holds.
	memory() int64
}

// sharded: each rank holds 1/N of each table's rows (shard.Embedding); a
// lookup fetches rows from their owners, a backward sends the gradients to
// them.
type sharded struct{ t [2]*shard.Embedding }

func newSharded(ctx context.Context, comm *collective.Comm, o *options) (*sharded, error) {
	s := &sharded{}
	for i, rows := range []int{o.users, o.items} {
		var err error
		s.t[i], err = shard.NewEmbedding(ctx, comm, rows, o.dim, shard.EmbeddingOptions{
			Optimizer: shard.NewAdagrad(float32(o.lr)), Init: initRow(o.seed, i)})
		if err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *sharded) lookup(ctx context.Context, t int, ids []int64, out []float32) error {
	return s.t[t].Lookup(ctx, ids, out)
}

func (s *sharded) backward(ctx context.Context, t int, ids []int64, grads []float32) error {
	return s.t[t].Backward(ctx, ids, grads)
}

func (s *sharded) bytesSent() int64 { return s.t[0].Stats().BytesSent + s.t[1].Stats().BytesSent }

func (s *sharded) memory() int64 {
	return int64(4 * (len(s.t[0].Values()) + len(s.t[0].State()) + len(s.t[1].Values()) + len(s.t[1].State())))
}

// replicated: every rank holds both whole tables; lookups are local, and
// the gradients are summed over the ranks by shard.SparseAllReducer
// (sparse or dense, as its cost estimate says), then every rank applies
// the same Adagrad update to the touched rows.
type replicated struct {
	dim     int
	opt     *shard.Adagrad
	values  [2][]float32
	state   [2][]float32
	reducer [2]*shard.SparseAllReducer
}

func newReplicated(comm *collective.Comm, o *options) (*replicated, error) {
	r := &replicated{dim: o.dim, opt: shard.NewAdagrad(float32(o.lr))}
	for i, rows := range []int{o.users, o.items} {
		r.values[i] = make([]float32, rows*o.dim)
		r.state[i] = make([]float32, rows*o.dim)
		init := initRow(o.seed, i)
		for row := range rows {
			init(row, r.values[i][row*o.dim:(row+1)*o.dim])
		}
		var err error
		if r.reducer[i], err = shard.NewSparseAllReducer(comm, rows, o.dim, shard.SparseAllReducerOptions{}); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (r *replicated) lookup(_ context.Context, t int, ids []int64, out []float32) error {
	d := r.dim
	for k, id := range ids {
		copy(out[k*d:(k+1)*d], r.values[t][int(id)*d:int(id+1)*d])
	}
	return nil
}

func (r *replicated) backward(ctx context.Context, t int, ids []int64, grads []float32) error {
	sum, err := r.reducer[t].AllReduce(ctx, ids, grads)
	if err != nil {
		return err
	}
	d := r.dim
	for k, id := range sum.IDs {
		r.opt.UpdateRow(r.values[t][int(id)*d:int(id+1)*d], sum.Values[k*d:(k+1)*d], r.state[t][int(id)*d:int(id+1)*d])
	}
	return nil
}

func (r *replicated) bytesSent() int64 {
	return r.reducer[0].Stats().Bytes + r.reducer[1].Stats().Bytes
}

func (r *replicated) memory() int64 {
	return int64(4 * (len(r.values[0]) + len(r.state[0]) + len(r.values[1]) + len(r.state[1])))
}

// model is the recommender: the click logit of (user, item) is the dot
// product of their embeddings plus a bias; the loss is the binary cross
// entropy, averaged over the global batch. The bias, the one dense
// parameter, is kept equal on every rank by an AllReduce of its gradient.
type model struct {
	comm   *collective.Comm
	gen    *generator
	o      *options
	tables tables
	bias   float32

	users, items []int64
	labels       []float32
	best         float64   // the batch's summed entropy: the loss of the true probabilities
	u, v         []float32 // the batch's user and item rows
	gu, gv       []float32 // their gradients
	sums         []float64 // bias gradient and loss, summed over ranks
}

func newModel(comm *collective.Comm, gen *generator, o *options, t tables) *model {
	b := o.batch/comm.Size() + 1
	return &model{comm: comm, gen: gen, o: o, tables: t,
		users: make([]int64, 0, b), items: make([]int64, 0, b), labels: make([]float32, 0, b),
		u: make([]float32, b*o.dim), v: make([]float32, b*o.dim), gu: make([]float32, b*o.dim), gv: make([]float32, b*o.dim),
		sums: make([]float64, 2)}
}

// batch fills this rank's share of global samples [first, first+count).
func (m *model) batch(first uint64, count int) {
	m.users, m.items, m.labels, m.best = m.users[:0], m.items[:0], m.labels[:0], 0
	n, r := m.comm.Size(), m.comm.Rank()
	for k := count * r / n; k < count*(r+1)/n; k++ {
		u, i, y, p := m.gen.sample(first + uint64(k))
		m.users, m.items, m.labels = append(m.users, u), append(m.items, i), append(m.labels, y)
		m.best += entropy(p)
	}
}

// forward looks the batch's rows up and returns this rank's loss sum; with
// train, it also leaves the rows' gradients (of the global mean loss) in
// gu and gv and the bias gradient in sums[0].
func (m *model) forward(ctx context.Context, globalBatch int, train bool) (float64, error) {
	d, b := m.o.dim, len(m.users)
	u, v := m.u[:b*d], m.v[:b*d]
	if err := m.tables.lookup(ctx, 0, m.users, u); err != nil {
		return 0, err
	}
	if err := m.tables.lookup(ctx, 1, m.items, v); err != nil {
		return 0, err
	}
	loss, gbias := 0.0, 0.0
	for k := range b {
		logit := m.bias
		for j := range d {
			logit += u[k*d+j] * v[k*d+j]
		}
		x, y := float64(logit), float64(m.labels[k])
		loss += math.Max(x, 0) + math.Log1p(math.Exp(-math.Abs(x))) - y*x // BCE with logits
		if !train {
			continue
		}
		g := float32((1/(1+math.Exp(-x)) - y) / float64(globalBatch))
		gbias += float64(g)
		for j := range d {
			m.gu[k*d+j] = g * v[k*d+j]
			m.gv[k*d+j] = g * u[k*d+j]
		}
	}
	m.sums[0] = gbias
	return loss, nil
}

// step trains on global batch number s and returns its mean loss.
func (m *model) step(ctx context.Context, s int) (float64, error) {
	B := m.o.batch
	m.batch(uint64(s*B), B)
	loss, err := m.forward(ctx, B, true)
	if err != nil {
		return 0, err
	}
	d, b := m.o.dim, len(m.users)
	if err := m.tables.backward(ctx, 0, m.users, m.gu[:b*d]); err != nil {
		return 0, err
	}
	if err := m.tables.backward(ctx, 1, m.items, m.gv[:b*d]); err != nil {
		return 0, err
	}
	m.sums[1] = loss
	if err := collective.AllReduce(ctx, m.comm, m.sums, collective.Sum); err != nil {
		return 0, err
	}
	m.bias -= float32(m.o.lr) * float32(m.sums[0])
	return m.sums[1] / float64(B), nil
}

// heldOutLoss is the mean loss on the held-out samples, with the loss of
// predicting their click rate for everyone (the base rate) and that of the
// generator's own probabilities (the best possible).
func (m *model) heldOutLoss(ctx context.Context) (loss, base, best float64, err error) {
	const chunk = 1024
	total, clicks, bestSum := 0.0, 0.0, 0.0
	sums := make([]float64, 3)
	for first := 0; first < m.o.eval; first += chunk {
		count := min(chunk, m.o.eval-first)
		m.batch(heldOut+uint64(first), count)
		l, err := m.forward(ctx, count, false)
		if err != nil {
			return 0, 0, 0, err
		}
		sums[0], sums[1], sums[2] = l, 0, m.best
		for _, y := range m.labels {
			sums[1] += float64(y)
		}
		if err := collective.AllReduce(ctx, m.comm, sums, collective.Sum); err != nil {
			return 0, 0, 0, err
		}
		total += sums[0]
		clicks += sums[1]
		bestSum += sums[2]
	}
	n := float64(m.o.eval)
	return total / n, entropy(clicks / n), bestSum / n, nil
}

// result is what one mode reports.
type result struct {
	mode                      string
	before, after, base, best float64
	losses                    []float64 // every -log-every steps
	bytesPerStep              float64   // table traffic sent per rank per step, averaged over ranks
	memory                    int64     // table bytes (values and state) per rank
}

func (r result) String() string {
	return fmt.Sprintf("%s: held-out loss %.4f -> %.4f (base rate %.4f, best possible %.4f); table traffic %.0f B sent per rank per step; tables %d B per rank",
		r.mode, r.before, r.after, r.base, r.best, r.bytesPerStep, r.memory)
}
