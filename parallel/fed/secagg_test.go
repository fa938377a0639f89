package fed

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"encoding/binary"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/internal/testlog"
	"github.com/ringo-ml/ringo/transport"
)

func defaultParams() *secureParams { return SecureAggregation{}.withDefaults().params() }

// TestPairMasksCancel: the masks of every pair of n clients, added by the
// lower id and subtracted by the higher, sum to zero modulo 2^64, while
// each client's own masked vector is far from zero.
func TestPairMasksCancel(t *testing.T) {
	const n, d = 6, 1000 // d > maskChunk/8: several keystream chunks
	const task = 42
	ids := []uint64{3, 9, 10, 17, 40, 41}
	keys := make([]*ecdh.PrivateKey, n)
	for i := range keys {
		var err error
		keys[i], err = newKey()
		require.NoError(t, err)
	}
	sum := make([]uint64, d)
	var m masker
	for i, self := range ids {
		v := make([]uint64, d)
		for j, peer := range ids {
			if i == j {
				continue
			}
			seed, err := agree(task, self, peer, keys[i], publicBytes(keys[j]))
			require.NoError(t, err)
			other, err := agree(task, peer, self, keys[j], publicBytes(keys[i]))
			require.NoError(t, err)
			require.Equal(t, seed, other, "both ends of a pair derive the same seed")
			m.apply(v, seed, !pairAdds(self, peer))
		}
		zeros := 0
		for _, x := range v {
			if x == 0 {
				zeros++
			}
		}
		assert.Less(t, zeros, 2, "a client's masks must cover every element")
		for j := range sum {
			sum[j] += v[j]
		}
	}
	assert.Equal(t, make([]uint64, d), sum)
}

func publicBytes(k *ecdh.PrivateKey) [32]byte { return [32]byte(k.PublicKey().Bytes()) }

// TestQuantisation: one client's encoding decodes to its update within
// half a fixed-point step (plus the float32 rounding of the result), for
// several scales; values beyond Clip are clipped and counted; weights
// that are not finite are refused.
func TestQuantisation(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const d = 2000
	global := make([]float32, d)
	w := make([]float32, d)
	for j := range w {
		global[j] = float32(rng.NormFloat64())
		w[j] = global[j] + float32(rng.NormFloat64())
	}
	for _, bits := range []int{0, 8, 16, 24, 32} {
		p := SecureAggregation{ScaleBits: bits, Clip: 8}.withDefaults().params()
		if bits == 0 {
			p.ScaleBits = 0
		}
		require.NoError(t, p.check())
		vec := make([]uint64, d+1)
		const examples = 37
		clipped, err := p.encodeUpdate(vec, w, global, examples)
		require.NoError(t, err)
		assert.Zero(t, clipped)
		out := make([]float32, d)
		n, err := p.decodeMean(out, vec, global, 1)
		require.NoError(t, err)
		assert.Equal(t, uint64(examples), n)
		step := math.Ldexp(1, -bits)
		for j := range out {
			ulp := float64(math.Nextafter32(w[j], float32(math.Inf(1))) - w[j])
			require.LessOrEqual(t, math.Abs(float64(out[j])-float64(w[j])), step/2+ulp, "bits %d element %d", bits, j)
		}
	}

	p := defaultParams()
	vec := make([]uint64, 4)
	clipped, err := p.encodeUpdate(vec, []float32{100, -100, 1}, []float32{0, 0, 0}, 1)
	require.NoError(t, err)
	assert.Equal(t, 2, clipped)
	assert.Equal(t, uint64(16<<24), vec[0])
	assert.Equal(t, uint64(math.MaxUint64-(16<<24)+1), vec[1]) // −16·2^24
	_, err = p.encodeUpdate(vec, []float32{float32(math.NaN()), 0, 0}, []float32{0, 0, 0}, 1)
	require.ErrorContains(t, err, "not a finite number")
	_, err = p.encodeUpdate(vec, []float32{0, 0, 0}, []float32{0, 0, 0}, p.MaxExamples+1)
	require.ErrorContains(t, err, "examples")
	_, err = p.decodeMean(make([]float32, 3), []uint64{0, 0, 0, 0}, []float32{0, 0, 0}, 1)
	require.ErrorContains(t, err, "weighs 0 examples")
}

// TestSecureParamsRange: parameters whose sums could overflow 63 bits are
// refused; maxClients is the largest count that cannot.
func TestSecureParamsRange(t *testing.T) {
	p := defaultParams()
	require.NoError(t, p.check())
	// 2^20 examples · 16·2^24 per element = 2^48 per client: 2^15 − 1 clients.
	assert.Equal(t, 1<<15-1, p.maxClients())
	p.ScaleBits = 40
	require.ErrorContains(t, p.check(), "leaves no room")
	p = defaultParams()
	p.Clip = math.Inf(1)
	require.Error(t, p.check())
	p = defaultParams()
	p.MinSurvivors = 1
	require.ErrorContains(t, p.check(), "reveals them")
	_, err := NewServer(context.Background(), ServerConfig{Addr: "127.0.0.1:0", Token: testToken, Weights: []float32{1},
		Secure: &SecureAggregation{ScaleBits: 41}})
	require.ErrorContains(t, err, "fixed-point bits")
}

// TestClientChecksUnmaskRequest: a client reveals nothing for a request
// that leaves it out, that covers too few survivors or that does not
// account for every client of the task exactly once.
func TestClientChecksUnmaskRequest(t *testing.T) {
	km := &keysMsg{Peers: []peerKey{{ID: 1}, {ID: 2}, {ID: 5}, {ID: 7}}}
	p := defaultParams()
	p.MinSurvivors = 2
	ok := &unmaskMsg{Survivors: []uint64{1, 5}, Dropped: []uint64{2, 7}}
	require.NoError(t, checkUnmask(ok, 5, km, p))
	for name, um := range map[string]*unmaskMsg{
		"self dropped":   {Survivors: []uint64{1, 2}, Dropped: []uint64{5, 7}},
		"too few":        {Survivors: []uint64{5}, Dropped: []uint64{1, 2, 7}},
		"client missing": {Survivors: []uint64{1, 5}, Dropped: []uint64{2}},
		"both":           {Survivors: []uint64{1, 5, 7}, Dropped: []uint64{2, 7}},
		"stranger":       {Survivors: []uint64{1, 5}, Dropped: []uint64{2, 9}},
	} {
		assert.Error(t, checkUnmask(um, 5, km, p), name)
	}
}

// recorder keeps every byte the server reads from each connection.
type recorder struct {
	mu    sync.Mutex
	conns []*bytes.Buffer
}

type recordedStream struct {
	transport.Stream
	r   *recorder
	buf *bytes.Buffer
}

func (r *recorder) wrap(s transport.Stream) transport.Stream {
	r.mu.Lock()
	defer r.mu.Unlock()
	b := new(bytes.Buffer)
	r.conns = append(r.conns, b)
	return &recordedStream{Stream: s, r: r, buf: b}
}

func (s *recordedStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	s.r.mu.Lock()
	s.buf.Write(p[:n])
	s.r.mu.Unlock()
	return n, err
}

func (r *recorder) all() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([][]byte, len(r.conns))
	for i, b := range r.conns {
		out[i] = bytes.Clone(b.Bytes())
	}
	return out
}

// encodings are the byte strings an update could travel as: its weights
// or its difference from the global weights, as float32 or float64, and
// its fixed-point values, plain or weighted, as int32 or int64; each in
// either byte order, two consecutive elements at a time (8 to 16 bytes:
// no chance match in a recording of this size).
func encodings(w, global []float32, examples int, scaleBits int) [][]byte {
	var out [][]byte
	scale := math.Ldexp(1, scaleBits)
	for j := 0; j+1 < len(w); j += 2 {
		for _, order := range []binary.AppendByteOrder{binary.LittleEndian, binary.BigEndian} {
			var f32, f64, d32, d64, q32, q64, nq64 []byte
			for _, k := range []int{j, j + 1} {
				delta := float64(w[k]) - float64(global[k])
				q := int64(math.RoundToEven(delta * scale))
				f32 = order.AppendUint32(f32, math.Float32bits(w[k]))
				f64 = order.AppendUint64(f64, math.Float64bits(float64(w[k])))
				d32 = order.AppendUint32(d32, math.Float32bits(float32(delta)))
				d64 = order.AppendUint64(d64, math.Float64bits(delta))
				q32 = order.AppendUint32(q32, uint32(int32(q)))
				q64 = order.AppendUint64(q64, uint64(q))
				nq64 = order.AppendUint64(nq64, uint64(int64(examples)*q))
			}
			out = append(out, f32, f64, d32, d64, q32, q64, nq64)
		}
	}
	return out
}

// foundIn counts the encodings that occur in any recording.
func foundIn(recs [][]byte, encs [][]byte) int {
	found := 0
	for _, e := range encs {
		for _, r := range recs {
			if bytes.Contains(r, e) {
				found++
				break
			}
		}
	}
	return found
}

// TestServerLearnsOnlyTheSum records every byte the server reads in a
// secure round with 4 honest clients and two more: one that drops after
// the keys are agreed (so the survivors reveal their pair seeds with it)
// and one whose masked update arrives after the server declared it
// dropped (so the server holds both its masked update and every pair seed
// it shares with the survivors). No client's update appears in the
// recordings in any plain encoding; removing every mask whose seed the
// server received leaves each masked update still masked; and the same
// search run on a round in the clear finds every update, so the search
// would have seen one.
func TestServerLearnsOnlyTheSum(t *testing.T) {
	const d, honest = 64, 4
	rng := rand.New(rand.NewPCG(11, 12))
	global := make([]float32, d)
	for j := range global {
		global[j] = float32(rng.NormFloat64())
	}
	updates := make([][]float32, honest+1) // the late client's last
	examples := make([]int, honest+1)
	for i := range updates {
		updates[i] = make([]float32, d)
		for j := range updates[i] {
			updates[i][j] = global[j] + float32(rng.NormFloat64()*0.05)
		}
		examples[i] = 100 + rng.IntN(900)
	}
	fit := func(name string) FitFunc {
		i, _ := strconv.Atoi(name[1:])
		return func(context.Context, *FitIns) (FitRes, error) {
			return FitRes{Weights: slices.Clone(updates[i]), Examples: examples[i]}, nil
		}
	}
	params := defaultParams()

	type transcript struct {
		raw  [][]byte   // every byte read, per connection
		msgs []observed // every message decoded, with its sender
		late *lateClient
		srv  *Server
	}
	run := func(secure bool) transcript {
		var rec recorder
		var mu sync.Mutex
		var tr transcript
		cfg := ServerConfig{
			Weights:      global,
			Rounds:       1,
			Strategy:     &FedAvg{MinFitClients: honest, MinAvailableClients: honest + 2},
			RoundTimeout: 3 * time.Second, // the late client's update misses it
			record:       rec.wrap,
			observe: func(c ClientInfo, m message) {
				mu.Lock()
				tr.msgs = append(tr.msgs, observed{c, m})
				mu.Unlock()
			},
		}
		if secure {
			cfg.Secure = &SecureAggregation{}
		}
		srv := startServer(t, cfg)
		runClients(t, srv, names(honest), ClientConfig{}, fit)
		dropper := dialFake(t, srv, "dropper")
		late := &lateClient{fakeClient: dialFake(t, srv, "late"), weights: updates[honest], examples: examples[honest]}
		dropped := make(chan struct{})
		go func() {
			defer close(dropped)
			f := dropper.recvFit()
			if f.Secure != nil {
				priv, err := newKey()
				if err == nil {
					dropper.send(&publicKeyMsg{Task: f.Task, Key: publicBytes(priv)})
					_ = dropper.recv() // the keys: the masks are agreed
				}
			}
			dropper.close()
		}()
		ready := make(chan struct{})
		go late.prepare(ready)
		require.NoError(t, srv.Run(testContext(t)))
		<-dropped
		<-ready
		late.sendLate()
		require.Eventually(t, func() bool { // until the server has read it
			mu.Lock()
			defer mu.Unlock()
			last := tr.msgs[len(tr.msgs)-1]
			return last.client.ID == late.id && taskOf(last.msg) == late.task
		}, testTimeout, time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		tr.raw, tr.late, tr.srv = rec.all(), late, srv
		return tr
	}

	// In the clear, every update is there to find.
	tr := run(false)
	for i := range honest + 1 {
		encs := encodings(updates[i], global, examples[i], int(params.ScaleBits))
		require.Positive(t, foundIn(tr.raw, encs), "client %d's update travels in the clear", i)
	}

	tr = run(true)
	h := tr.srv.History()[0]
	require.Len(t, h.Clients, honest)
	require.Len(t, h.Failures, 2) // the dropper and the late client
	for i := range honest + 1 {
		encs := encodings(updates[i], global, examples[i], int(params.ScaleBits))
		assert.Zero(t, foundIn(tr.raw, encs), "client %d's update appears in what the server received", i)
	}

	// The curious server's best: strip every mask whose seed it received.
	masked := map[uint64][]uint64{}
	reveals := map[uint64]*revealMsg{}
	for _, o := range tr.msgs {
		switch m := o.msg.(type) {
		case *maskedMsg:
			masked[o.client.ID] = m.Vector
		case *revealMsg:
			reveals[o.client.ID] = m
		}
	}
	require.Len(t, masked, honest+1)
	require.Len(t, reveals, honest)
	late := tr.late
	require.Equal(t, late.vector, masked[late.id])
	var mk masker
	for u, y := range masked {
		v := slices.Clone(y)
		if r, ok := reveals[u]; ok { // a survivor: its own mask, and its masks with the dropped
			mk.apply(v, selfMaskKey(r.Task, r.SelfSeed), true)
			for _, p := range r.Pairs {
				mk.apply(v, p.Seed, pairAdds(u, p.ID))
			}
		}
		for s, r := range reveals { // the seeds others revealed with u
			for _, p := range r.Pairs {
				if p.ID == u {
					mk.apply(v, p.Seed, pairAdds(u, s))
				}
			}
		}
		plain := make([]uint64, len(v))
		for i := range honest + 1 {
			_, err := params.encodeUpdate(plain, updates[i], global, uint64(examples[i]))
			require.NoError(t, err)
			same := 0
			for j := range plain {
				if plain[j] == v[j] {
					same++
				}
			}
			assert.Less(t, same, 2, "client %d's masked update, stripped of every revealed mask, shows client %d's update", u, i)
		}
	}

	// The late client's self mask is what protects it: with it removed
	// as well (only the test knows its seed), and its mask with the
	// dropper, its update would be in the clear.
	v := slices.Clone(late.vector)
	mk.apply(v, selfMaskKey(late.task, late.seed), true)
	for peer, seed := range late.seeds {
		mk.apply(v, seed, pairAdds(late.id, peer))
	}
	want := make([]uint64, d+1)
	_, err := params.encodeUpdate(want, late.weights, global, uint64(late.examples))
	require.NoError(t, err)
	require.Equal(t, want, v)
}

type observed struct {
	client ClientInfo
	msg    message
}

// lateClient masks its update honestly but sends it only after the round
// is over.
type lateClient struct {
	*fakeClient
	weights  []float32
	examples int

	task   uint64
	seed   [32]byte
	seeds  map[uint64][32]byte
	vector []uint64 // nil in the clear
	update *updateMsg
}

func (l *lateClient) prepare(ready chan<- struct{}) {
	defer close(ready)
	f := l.recvFit()
	l.task = f.Task
	if f.Secure == nil {
		l.update = &updateMsg{Task: f.Task, Examples: uint64(l.examples), Weights: l.weights}
		return
	}
	priv, err := newKey()
	require.NoError(l.t, err)
	l.seed, err = newSelfSeed()
	require.NoError(l.t, err)
	l.send(&publicKeyMsg{Task: f.Task, Key: publicBytes(priv), Commit: selfCommit(f.Task, l.seed)})
	km, ok := l.recv().(*keysMsg)
	require.True(l.t, ok)
	l.seeds = make(map[uint64][32]byte)
	l.vector = make([]uint64, len(l.weights)+1)
	_, err = f.Secure.encodeUpdate(l.vector, l.weights, f.Weights, uint64(l.examples))
	require.NoError(l.t, err)
	var mk masker
	mk.apply(l.vector, selfMaskKey(f.Task, l.seed), false)
	for _, pk := range km.Peers {
		if pk.ID == l.id {
			continue
		}
		s, err := agree(f.Task, l.id, pk.ID, priv, pk.Key)
		require.NoError(l.t, err)
		l.seeds[pk.ID] = s
		mk.apply(l.vector, s, !pairAdds(l.id, pk.ID))
	}
}

func (l *lateClient) sendLate() {
	if l.vector == nil {
		l.send(l.update)
		return
	}
	l.send(&maskedMsg{Task: l.task, Vector: l.vector})
}

// TestSecureDropouts: a sampled client that drops before sending its key,
// after the keys are agreed (gone, or silent until the round's timeout),
// or after sending its masked update but before revealing its seeds: the
// round completes without it (in the last case on a second attempt, as
// the sum cannot be unmasked without the seeds), and the aggregate is
// exactly the other clients' weighted mean.
func TestSecureDropouts(t *testing.T) {
	const d = 33
	examples := []int{1, 3, 5, 7}
	cases := []struct {
		name     string
		attempts int
		behave   func(f *lateClient)
	}{
		{"before keys", 1, func(f *lateClient) {
			f.recvFit()
			f.close()
		}},
		{"after keys", 1, func(f *lateClient) {
			ready := make(chan struct{})
			f.prepare(ready) // agrees keys and masks its update
			f.close()
		}},
		{"silent after keys", 1, func(f *lateClient) {
			ready := make(chan struct{})
			f.prepare(ready)
			f.recv() // the next round's fit, or the bye: the round went on without it
		}},
		{"after masked update", 2, func(f *lateClient) {
			ready := make(chan struct{})
			f.prepare(ready)
			f.sendLate() // in time
			f.close()
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs testlog.Buffer
			srv := startServer(t, ServerConfig{
				Weights:      exactWeights(d),
				Rounds:       1,
				Strategy:     &firstWithAll{FedAvg: FedAvg{MinFitClients: 4}, all: 5},
				Secure:       &SecureAggregation{},
				RoundTimeout: 2 * time.Second,
				Logger:       logs.Logger(slog.LevelDebug),
			})
			runClients(t, srv, names(4), ClientConfig{}, func(name string) FitFunc {
				i, _ := strconv.Atoi(name[1:])
				return exactFit(i, examples[i])
			})
			f := &lateClient{fakeClient: dialFake(t, srv, "dropper"), weights: make([]float32, d), examples: 8}
			done := make(chan struct{})
			go func() {
				defer close(done)
				c.behave(f)
			}()
			require.NoError(t, srv.Run(testContext(t)))
			<-done
			want, exact := exactMean(exactWeights(d), []int{0, 1, 2, 3}, examples, 1)
			require.True(t, exact)
			requireBitwise(t, want, srv.Weights())
			h := srv.History()[0]
			assert.Equal(t, c.attempts, h.Attempts)
			assert.Len(t, h.Clients, 4)
			if c.attempts == 2 {
				assert.Contains(t, logs.String(), "sent a masked update but not the seeds to unmask it")
			} else {
				require.Len(t, h.Failures, 1)
				assert.Equal(t, "dropper", h.Failures[0].Client.Name)
			}
		})
	}
}

// TestClientsComeAndGo: a client that leaves in the middle of its
// training (its Run's context cancelled) is dropped from the round, which
// completes without it; it joins again and takes part in the next round.
func TestClientsComeAndGo(t *testing.T) {
	const d = 12
	examples := []int{2, 2, 4, 8}
	for _, secure := range []bool{false, true} {
		t.Run("secure="+strconv.FormatBool(secure), func(t *testing.T) {
			cfg := ServerConfig{Weights: exactWeights(d), Rounds: 2, Strategy: &FedAvg{MinFitClients: 3, MinAvailableClients: 4}}
			if secure {
				cfg.Secure = &SecureAggregation{}
			}
			srv := startServer(t, cfg)
			runClients(t, srv, names(3), ClientConfig{}, func(name string) FitFunc {
				i, _ := strconv.Atoi(name[1:])
				return exactFit(i, examples[i])
			})
			ctx, leave := context.WithCancel(testContext(t))
			left := make(chan struct{})
			leaver, err := NewClient(ClientConfig{
				Addr: srv.Addr(), Token: testToken, Job: testJob, Name: "c03", Logger: discardLogger(),
				Fit: func(ctx context.Context, ins *FitIns) (FitRes, error) {
					leave()
					<-ctx.Done()
					return FitRes{}, ctx.Err()
				},
			})
			require.NoError(t, err)
			go func() {
				defer close(left)
				assert.ErrorIs(t, leaver.Run(ctx), context.Canceled)
			}()
			back, err := NewClient(ClientConfig{Addr: srv.Addr(), Token: testToken, Job: testJob, Name: "c03", Logger: discardLogger(), Fit: exactFit(3, examples[3])})
			require.NoError(t, err)
			backDone := make(chan error, 1)
			go func() {
				<-left
				backDone <- back.Run(testContext(t))
			}()
			require.NoError(t, srv.Run(testContext(t)))
			require.NoError(t, <-backDone)
			want, exact := exactMean(exactWeights(d), []int{0, 1, 2}, examples[:3], 1)
			require.True(t, exact)
			want, exact = exactMean(want, []int{0, 1, 2, 3}, examples, 2)
			require.True(t, exact)
			requireBitwise(t, want, srv.Weights())
			h := srv.History()
			require.Len(t, h[0].Failures, 1)
			assert.Equal(t, "c03", h[0].Failures[0].Client.Name)
			assert.Len(t, h[1].Clients, 4)
		})
	}
}

// firstWithAll is FedAvg that starts its first attempt only with all
// clients connected.
type firstWithAll struct {
	FedAvg
	all     int
	started bool
}

func (f *firstWithAll) ConfigureFit(round int, connected []ClientInfo, rng *rand.Rand) (FitPlan, error) {
	if !f.started && len(connected) < f.all {
		return FitPlan{}, ErrTooFewClients
	}
	f.started = true
	return f.FedAvg.ConfigureFit(round, connected, rng)
}

// TestRemoveMasksInParallel: the workers' partial vectors add up to what
// removing the masks one after the other gives, for any worker count.
func TestRemoveMasksInParallel(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var removals []maskRemoval
	for i := range 7 {
		var k [32]byte
		for j := range k {
			k[j] = byte(rng.Uint32())
		}
		removals = append(removals, maskRemoval{k, i%3 == 0})
	}
	start := make([]uint64, 1500)
	for j := range start {
		start[j] = rng.Uint64()
	}
	want := slices.Clone(start)
	var m masker
	for _, r := range removals {
		m.apply(want, r.key, r.subtract)
	}
	for _, procs := range []int{1, 2, 3, 8} {
		prev := runtime.GOMAXPROCS(procs)
		got := slices.Clone(start)
		removeMasks(got, removals)
		runtime.GOMAXPROCS(prev)
		require.Equal(t, want, got, "GOMAXPROCS=%d", procs)
	}
}
