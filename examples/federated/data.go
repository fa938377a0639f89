package main

import (
	"math/rand/v2"
	"slices"

	"github.com/ringo-ml/ringo/internal/mnist"
)

// splitStream separates the split's random streams from the models' (the
// MLP uses PCG(seed, layer)) and the clients' sample orders.
const splitStream = 1 << 41

// mainDigits are the two digits client c holds most of in a non-IID split.
func mainDigits(c int) [2]int32 {
	return [2]int32{int32(c % mnist.Classes), int32((c + 1) % mnist.Classes)}
}

// splitNonIID deals the samples of labels to clients so that each holds
// mostly two digits (mainDigits): a fraction skew of each digit's samples
// goes, in equal parts, to the clients whose main digits include it, and
// the rest is dealt to all clients alike. With 10 clients each digit is
// the main digit of two clients, and every client holds about 6000
// samples, a fraction skew of them of its two digits.
func splitNonIID(labels []int32, clients int, skew float64, seed uint64) [][]int {
	byDigit := make([][]int, mnist.Classes)
	for i, y := range labels {
		byDigit[y] = append(byDigit[y], i)
	}
	shards := make([][]int, clients)
	rest := 0 // the client the next of the rest goes to, across digits
	for d, idx := range byDigit {
		rng := rand.New(rand.NewPCG(seed, splitStream+uint64(d)))
		rng.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
		var owners []int
		for c := range clients {
			if m := mainDigits(c); m[0] == int32(d) || m[1] == int32(d) {
				owners = append(owners, c)
			}
		}
		owned := 0
		if len(owners) > 0 {
			owned = int(skew * float64(len(idx)))
		}
		for k, i := range idx[:owned] {
			c := owners[k%len(owners)]
			shards[c] = append(shards[c], i)
		}
		for _, i := range idx[owned:] {
			shards[rest] = append(shards[rest], i)
			rest = (rest + 1) % clients
		}
	}
	for _, s := range shards {
		slices.Sort(s)
	}
	return shards
}

// splitIID deals the samples to clients uniformly at random, in equal
// parts.
func splitIID(n, clients int, seed uint64) [][]int {
	order := rand.New(rand.NewPCG(seed, splitStream+mnist.Classes)).Perm(n)
	shards := make([][]int, clients)
	for k, i := range order {
		shards[k%clients] = append(shards[k%clients], i)
	}
	for _, s := range shards {
		slices.Sort(s)
	}
	return shards
}

// split is the -data split of the training set.
func split(o *options, train *mnist.Set) [][]int {
	labels := train.Labels
	if o.trainSamples > 0 && o.trainSamples < len(labels) {
		labels = labels[:o.trainSamples]
	}
	if o.data == "iid" {
		return splitIID(len(labels), o.clients, o.seed)
	}
	return splitNonIID(labels, o.clients, o.skew, o.seed)
}
