package main

import (
	"math"
	"math/rand/v2"
)

// The data generator: a synthetic click log with a known answer.
//
// Every user u and item i has a hidden taste vector of trueDim values, each
// drawn from N(0, 1/trueDim) by a PCG seeded with (seed, u) or
// (seed, users+i), so any rank can compute any of them on its own. Sample
// number g (global: step·batch + position in the global batch) comes from a
// PCG seeded with (seed, 1<<40 + g): its user is uniform over the users, its
// item Zipf-distributed (exponent 1.1: a few items are very popular, as in
// real logs, so a batch repeats item ids), and its label is a click (1)
// with probability sigmoid(trueScale · taste_u · taste_i), otherwise 0.
//
// A model that learns the tastes predicts clicks better than the base
// rate; the held-out samples are numbers 1<<50 onward, never trained on.
type generator struct {
	seed         uint64
	users, items int
	userTaste    []float64 // users × trueDim
	itemTaste    []float64 // items × trueDim
}

const (
	trueDim   = 8
	trueScale = 4.0
	zipfS     = 1.1
	heldOut   = 1 << 50
)

func newGenerator(seed uint64, users, items int) *generator {
	g := &generator{seed: seed, users: users, items: items,
		userTaste: make([]float64, users*trueDim), itemTaste: make([]float64, items*trueDim)}
	taste := func(dst []float64, stream uint64) {
		rng := rand.New(rand.NewPCG(seed, stream))
		for j := range dst {
			dst[j] = rng.NormFloat64() / math.Sqrt(trueDim)
		}
	}
	for u := range users {
		taste(g.userTaste[u*trueDim:(u+1)*trueDim], uint64(u))
	}
	for i := range items {
		taste(g.itemTaste[i*trueDim:(i+1)*trueDim], uint64(users+i))
	}
	return g
}

// sample is sample number n: its user, item and label, and the click
// probability the label was drawn with.
func (g *generator) sample(n uint64) (user, item int64, click float32, p float64) {
	rng := rand.New(rand.NewPCG(g.seed, 1<<40+n))
	user = int64(rng.IntN(g.users))
	item = int64(rand.NewZipf(rng, zipfS, 1, uint64(g.items-1)).Uint64())
	dot := 0.0
	for j := range trueDim {
		dot += g.userTaste[int(user)*trueDim+j] * g.itemTaste[int(item)*trueDim+j]
	}
	p = 1 / (1 + math.Exp(-trueScale*dot))
	if rng.Float64() < p {
		click = 1
	}
	return user, item, click, p
}

// entropy is the expected loss of predicting p for a label drawn with p:
// the best any model can do on the sample.
func entropy(p float64) float64 {
	if p <= 0 || p >= 1 {
		return 0
	}
	return -(p*math.Log(p) + (1-p)*math.Log(1-p))
}

// initRow gives a table row its initial values: small, from the row alone
// (so every rank count starts from the same model).
func initRow(seed uint64, table int) func(row int, values []float32) {
	return func(row int, values []float32) {
		rng := rand.New(rand.NewPCG(seed^0x5eed, uint64(table)<<40|uint64(row)))
		for j := range values {
			values[j] = float32(rng.NormFloat64() * 0.1)
		}
	}
}
