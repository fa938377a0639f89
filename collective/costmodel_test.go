package collective

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/transport"
)

func TestCostFormulas(t *testing.T) {
	const n = 1 << 20
	m := costModel{Alpha: 1, Beta: 1, Gamma: 1, Duplex: 1}
	cases := []struct {
		algo algorithm
		size int
		want cost
	}{
		{algoRing, 4, cost{6, 1.5 * n, 0.75 * n}},
		{algoDoubling, 4, cost{2, 2 * n, 2 * n}},
		{algoRabenseifner, 4, cost{4, 1.5 * n, 0.75 * n}},
		{algoBidir, 4, cost{6, 1.5 * n, 0.75 * n}},
		// 5 ranks: p2 = 4 and the fold (2 messages, 2n on the wire, n reduced).
		{algoRing, 5, cost{8, 1.6 * n, 0.8 * n}},
		{algoDoubling, 5, cost{4, 4 * n, 3 * n}},
		{algoRabenseifner, 5, cost{6, 3.5 * n, 1.75 * n}},
		{algoDoubling, 2, cost{1, n, n}},
		{algoRabenseifner, 2, cost{2, n, 0.5 * n}},
		{algoRing, 1, cost{}},
	}
	for _, tc := range cases {
		got := m.allReduceCost(tc.algo, tc.size, n)
		assert.InDelta(t, tc.want.rounds, got.rounds, 1e-9, "%v N=%d rounds", tc.algo, tc.size)
		assert.InDelta(t, tc.want.wire, got.wire, 1e-3, "%v N=%d wire", tc.algo, tc.size)
		assert.InDelta(t, tc.want.reduced, got.reduced, 1e-3, "%v N=%d reduced", tc.algo, tc.size)
	}
	// A full-duplex link halves bidir's wire time, and only that.
	m.Duplex = 2
	assert.InDelta(t, 0.75*n, m.allReduceCost(algoBidir, 4, n).wire, 1e-3)
	// Messages of more than 4 MiB go in several frames, each a latency (in
	// lockstep); the ring's pipelined pieces overlap and count as one.
	const big = 16 << 20
	assert.InDelta(t, 4.0, m.allReduceCost(algoDoubling, 2, big).rounds, 1e-9)         // 4 frames
	assert.InDelta(t, 2*2+2*1, m.allReduceCost(algoRabenseifner, 4, big).rounds, 1e-9) // 8 MiB, 4 MiB halves
	assert.InDelta(t, 3*64, m.allReduceCost(algoDoubling, 3, 256<<20).rounds, 1e-9)    // one exchange and the fold, of 64 frames each
	assert.InDelta(t, 2.0, m.allReduceCost(algoRing, 2, big).rounds, 1e-9)
}

// model is the model of a communicator over TCP (and, for now, over every
// transport: none brings constants of its own yet).
var model = modelOf(transport.NewTCPNetwork(nil).Cost())

var chooserSizes = []int{0, 8, 1 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 1 << 30}

// TestChooserPicksTheModelsCheapest checks that auto mode runs the
// algorithm the model prices lowest, at every size and world size, and
// that a forced algorithm wins over the model.
func TestChooserPicksTheModelsCheapest(t *testing.T) {
	seen := map[algorithm]bool{}
	for size := 2; size <= 8; size++ {
		c := &Comm{size: size, model: model}
		for _, bytes := range chooserSizes {
			want, wantT := algoAuto, math.Inf(1)
			for _, a := range []algorithm{algoRing, algoDoubling, algoRabenseifner} {
				if tt := model.predict(model.allReduceCost(a, size, bytes)); float64(tt) < wantT {
					want, wantT = a, float64(tt)
				}
			}
			got := c.allReduceAlgorithm(bytes)
			require.Equal(t, want, got, "N=%d %d bytes", size, bytes)
			seen[got] = true
			for _, forced := range []algorithm{algoRing, algoDoubling, algoRabenseifner, algoBidir} {
				f := &Comm{size: size, model: model, algo: forced}
				require.Equal(t, forced, f.allReduceAlgorithm(bytes))
			}
		}
		// Latency-bound: the fewest rounds. Bandwidth-bound: never the
		// algorithm that moves the whole vector every round.
		assert.Equal(t, algoDoubling, c.allReduceAlgorithm(8), "N=%d", size)
		assert.NotEqual(t, algoDoubling, c.allReduceAlgorithm(1<<30), "N=%d", size)
	}
	assert.Equal(t, algoRing, (&Comm{size: 1, model: model}).allReduceAlgorithm(8), "one rank has nothing to do")
	assert.True(t, seen[algoDoubling], "doubling chosen somewhere")
	assert.True(t, seen[algoRing] || seen[algoRabenseifner], "a bandwidth algorithm chosen somewhere")
}

func TestBroadcastChooser(t *testing.T) {
	for size := 2; size <= 8; size++ {
		c := &Comm{size: size, model: model}
		for _, bytes := range chooserSizes {
			want := algoRing
			if model.seconds(model.broadcastCost(algoDoubling, size, bytes)) < model.seconds(model.broadcastCost(algoRing, size, bytes)) {
				want = algoDoubling
			}
			require.Equal(t, want, c.broadcastAlgorithm(bytes), "N=%d %d bytes", size, bytes)
		}
		assert.Equal(t, algoDoubling, c.broadcastAlgorithm(8), "N=%d: small goes by tree", size)
		if size > 2 { // on 2 ranks both are one hop: the tree has no acknowledgement to wait for
			assert.Equal(t, algoRing, c.broadcastAlgorithm(1<<30), "N=%d: large goes by chain", size)
		}
		assert.Equal(t, algoDoubling, (&Comm{size: size, model: model, algo: algoDoubling}).broadcastAlgorithm(1<<30))
		assert.Equal(t, algoRing, (&Comm{size: size, model: model, algo: algoRing}).broadcastAlgorithm(8))
		assert.Equal(t, algoRing, (&Comm{size: size, model: model, algo: algoBidir}).broadcastAlgorithm(8))
	}
}

// costConnector is a connector whose links cost what it says.
type costConnector struct{ c transport.Cost }

func (f costConnector) connect(context.Context, uint64, int) (transport.Stream, error) {
	return nil, errors.New("costConnector connects nothing")
}
func (f costConnector) cost() transport.Cost { return f.c }
func (f costConnector) retain()              {}
func (f costConnector) release()             {}

// TestTheTransportPricesTheAlgorithms: a communicator takes its cost model
// from its connections. On links where latency is all that counts, a
// mid-size AllReduce goes by the fewest rounds (recursive doubling); where
// bytes are all that count, never by the algorithm that sends the whole
// vector every round.
func TestTheTransportPricesTheAlgorithms(t *testing.T) {
	const size, bytes = 4, 1 << 20
	form := func(c transport.Cost) *Comm {
		comm := newComm(0, size, make([]transport.Stream, size), Config{}, world{conn: costConnector{c}})
		t.Cleanup(func() { _ = comm.Close() })
		return comm
	}
	latencyBound := form(transport.Cost{Alpha: 1, Beta: 1e-15, Duplex: 1})
	bandwidthBound := form(transport.Cost{Alpha: 1e-15, Beta: 1e-6, Duplex: 1})
	assert.Equal(t, modelOf(transport.Cost{Alpha: 1, Beta: 1e-15, Duplex: 1}), latencyBound.model)
	assert.Equal(t, algoDoubling, latencyBound.allReduceAlgorithm(bytes))
	assert.NotEqual(t, algoDoubling, bandwidthBound.allReduceAlgorithm(bytes))
	assert.Equal(t, algoDoubling, latencyBound.broadcastAlgorithm(bytes), "the tree: fewer rounds than the chain")
	assert.Equal(t, algoRing, bandwidthBound.broadcastAlgorithm(bytes), "the chain: fewer bytes per link than the tree")
	// TCP's own model chooses otherwise at this size: the choice is the
	// transport's, not a constant's.
	assert.NotEqual(t, algoDoubling, (&Comm{size: size, model: model}).allReduceAlgorithm(bytes))
}

// benchRow is one measured (ranks, algorithm, size): the median ns/op.
type benchRow struct {
	ranks int
	algo  algorithm
	bytes int
	ns    float64
}

var benchLine = regexp.MustCompile(`^BenchmarkAllReduceModel/ranks=(\d+)/(\w+)/(\d+)(B|KiB|MiB)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op`)

// readBench reads go test -bench=AllReduceModel output: the median of each
// row's repetitions.
func readBench(t *testing.T, path string) []benchRow {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	type key struct {
		ranks int
		algo  algorithm
		bytes int
	}
	samples := map[key][]float64{}
	var order []key
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		ranks, _ := strconv.Atoi(m[1])
		algo, err := parseAlgorithm(m[2])
		require.NoError(t, err)
		bytes, _ := strconv.Atoi(m[3])
		bytes <<= map[string]int{"B": 0, "KiB": 10, "MiB": 20}[m[4]]
		ns, _ := strconv.ParseFloat(m[5], 64)
		k := key{ranks, algo, bytes}
		if samples[k] == nil {
			order = append(order, k)
		}
		samples[k] = append(samples[k], ns)
	}
	require.NoError(t, sc.Err())
	rows := make([]benchRow, 0, len(order))
	for _, k := range order {
		s := samples[k]
		slices.Sort(s)
		rows = append(rows, benchRow{k.ranks, k.algo, k.bytes, s[len(s)/2]})
	}
	return rows
}

// fitModel finds Alpha, Beta, Gamma >= 0 minimising the sum over rows of
// (predicted/measured - 1)^2: relative error, so that 8-byte rows weigh as
// much as 16 MiB ones. Non-negativity by trying every subset of the three
// parameters and keeping the best feasible solution.
//
// A gamma >= 0 is taken as measured (by the kernel benchmark) and only
// Alpha and Beta are fitted: on loopback the reduction is a small part of
// the time, and the wire and reduced bytes of the algorithms are too nearly
// proportional for a fit to tell Beta from Gamma.
func fitModel(rows []benchRow, gamma float64) (costModel, float64) {
	x := make([][3]float64, len(rows))
	y := make([]float64, len(rows)) // the part of 1 the fitted terms must explain
	shape := costModel{Duplex: 1}
	for i, r := range rows {
		c := shape.allReduceCost(r.algo, r.ranks, r.bytes)
		T := r.ns * 1e-9
		x[i] = [3]float64{c.rounds / T, c.wire / T, c.reduced / T}
		y[i] = 1
		if gamma >= 0 {
			y[i] -= gamma * x[i][2]
			x[i][2] = 0
		}
	}
	best, bestErr := shape, math.Inf(1)
	for mask := 1; mask < 8; mask++ {
		var idx []int
		for j := range 3 {
			if mask&(1<<j) != 0 {
				idx = append(idx, j)
			}
		}
		// Normal equations over the chosen parameters.
		k := len(idx)
		a := make([][]float64, k)
		for p := range k {
			a[p] = make([]float64, k+1)
			for i, xi := range x {
				for q := range k {
					a[p][q] += xi[idx[p]] * xi[idx[q]]
				}
				a[p][k] += xi[idx[p]] * y[i]
			}
		}
		theta, ok := solve(a)
		if !ok || slices.ContainsFunc(theta, func(v float64) bool { return v < 0 }) {
			continue
		}
		var p [3]float64
		for q, j := range idx {
			p[j] = theta[q]
		}
		var sse float64
		for i, xi := range x {
			e := xi[0]*p[0] + xi[1]*p[1] + xi[2]*p[2] - y[i]
			sse += e * e
		}
		if sse < bestErr {
			best, bestErr = costModel{Alpha: p[0], Beta: p[1], Gamma: p[2], Duplex: 1}, sse
		}
	}
	if gamma >= 0 {
		best.Gamma = gamma
	}
	return best, bestErr
}

// solve solves the augmented system a by Gaussian elimination with partial
// pivoting.
func solve(a [][]float64) ([]float64, bool) {
	k := len(a)
	for c := range k {
		p := c
		for r := c + 1; r < k; r++ {
			if math.Abs(a[r][c]) > math.Abs(a[p][c]) {
				p = r
			}
		}
		if math.Abs(a[p][c]) < 1e-300 {
			return nil, false
		}
		a[c], a[p] = a[p], a[c]
		for r := range k {
			if r != c {
				f := a[r][c] / a[c][c]
				for q := c; q <= k; q++ {
					a[r][q] -= f * a[c][q]
				}
			}
		}
	}
	out := make([]float64, k)
	for c := range k {
		out[c] = a[c][k] / a[c][c]
	}
	return out, true
}

func TestFitRecoversKnownParameters(t *testing.T) {
	truth := costModel{Alpha: 40e-6, Beta: 2e-9, Gamma: 0.7e-9, Duplex: 1}
	var rows []benchRow
	for _, n := range []int{2, 3, 4} {
		for _, a := range autoAllReduce {
			for _, b := range []int{8, 16 << 10, 256 << 10, 1 << 20, 16 << 20} {
				rows = append(rows, benchRow{n, a, b, truth.seconds(truth.allReduceCost(a, n, b)) * 1e9})
			}
		}
	}
	for _, gamma := range []float64{-1, truth.Gamma} { // fitted, then given
		got, sse := fitModel(rows, gamma)
		assert.Less(t, sse, 1e-12)
		assert.InEpsilon(t, truth.Alpha, got.Alpha, 1e-6)
		assert.InEpsilon(t, truth.Beta, got.Beta, 1e-6)
		assert.InEpsilon(t, truth.Gamma, got.Gamma, 1e-6)
	}
}

// TestFitCostModel fits the model to a BenchmarkAllReduceModel output named
// by RINGO_FIT (the rows of ring, doubling and rabenseifner; bidir rows are
// shown, not fitted) and prints the parameters and, for every row, the
// fitted and the compiled-in model's prediction beside the measurement.
func TestFitCostModel(t *testing.T) {
	path := os.Getenv("RINGO_FIT")
	if path == "" {
		t.Skip("set RINGO_FIT to a BenchmarkAllReduceModel output to fit the model to it")
	}
	rows := readBench(t, path)
	var fitRows []benchRow
	for _, r := range rows {
		if r.algo != algoBidir {
			fitRows = append(fitRows, r)
		}
	}
	require.NotEmpty(t, fitRows)
	gamma := -1.0 // fitted, unless RINGO_FIT_GAMMA gives it in ns/B
	if v := os.Getenv("RINGO_FIT_GAMMA"); v != "" {
		g, err := strconv.ParseFloat(v, 64)
		require.NoError(t, err)
		gamma = g * 1e-9
	}
	fit, sse := fitModel(fitRows, gamma)
	fmt.Printf("fitted: Alpha = %.1f us, Beta = %.3f ns/B (%.0f MB/s), Gamma = %.3f ns/B (%.0f MB/s), rms relative error %.0f%% over %d rows\n",
		fit.Alpha*1e6, fit.Beta*1e9, 1e-6/fit.Beta, fit.Gamma*1e9, 1e-6/fit.Gamma, 100*math.Sqrt(sse/float64(len(fitRows))), len(fitRows))
	fmt.Printf("| N | algorithm | size | measured | fitted model | compiled model | auto picks |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		p := fit.predict(fit.allReduceCost(r.algo, r.ranks, r.bytes))
		q := model.predict(model.allReduceCost(r.algo, r.ranks, r.bytes))
		fmt.Printf("| %d | %v | %s | %s | %s (%+.0f%%) | %s (%+.0f%%) | %v |\n", r.ranks, r.algo, sizeName(r.bytes),
			us(r.ns), us(float64(p)), 100*(float64(p)/r.ns-1), us(float64(q)), 100*(float64(q)/r.ns-1), model.bestAllReduce(r.ranks, r.bytes))
	}
}

func us(ns float64) string { return fmt.Sprintf("%.0f us", ns/1e3) }

func sizeName(b int) string {
	switch {
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", b>>20)
	case b >= 1<<10 && b%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", b>>10)
	}
	return fmt.Sprintf("%d B", b)
}
