package fed

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// SecureAggregation turns on secure aggregation (see the package
// documentation for the protocol and its threat model). Zero fields take
// their defaults.
type SecureAggregation struct {
	// ScaleBits is the fixed point's fractional bits: an update element v
	// travels as round(v·2^ScaleBits), so the aggregate's mean update is
	// within 2^−(ScaleBits+1) of the exact one. Default 24 (6e−8).
	ScaleBits int
	// Clip bounds each element of a client's update (its trained weights
	// minus the global weights) to [−Clip, Clip] before it is encoded; a
	// client that clips logs how many elements it clipped. Default 16.
	Clip float64
	// MaxExamples is the largest sample count a client may weight its
	// update with (a client with more uses this). Default 1<<20.
	MaxExamples int
	// MinSurvivors is the fewest updates a sum may hold for the clients to
	// unmask it; it is at least 2 (a "sum" of one update is that update).
	// Default 2, raised to the round's minimum number of results.
	MinSurvivors int
	// KeyTimeout bounds the wait for the sampled clients' public keys, at
	// the start of each round. Default 30 s (at most RoundTimeout).
	KeyTimeout time.Duration
	// UnmaskTimeout bounds the wait for the seeds that unmask the sum, at
	// the end of each round. Default 30 s.
	UnmaskTimeout time.Duration
}

const (
	defaultScaleBits   = 24
	defaultClip        = 16
	defaultMaxExamples = 1 << 20
	maxScaleBits       = 40
)

func (s SecureAggregation) withDefaults() SecureAggregation {
	if s.ScaleBits == 0 {
		s.ScaleBits = defaultScaleBits
	}
	if s.Clip == 0 {
		s.Clip = defaultClip
	}
	if s.MaxExamples == 0 {
		s.MaxExamples = defaultMaxExamples
	}
	s.MinSurvivors = max(s.MinSurvivors, 2)
	if s.KeyTimeout == 0 {
		s.KeyTimeout = 30 * time.Second
	}
	if s.UnmaskTimeout == 0 {
		s.UnmaskTimeout = 30 * time.Second
	}
	return s
}

func (s SecureAggregation) params() *secureParams {
	return &secureParams{
		ScaleBits:    uint8(s.ScaleBits),
		Clip:         s.Clip,
		MaxExamples:  uint64(s.MaxExamples),
		MinSurvivors: uint32(s.MinSurvivors),
	}
}

// check validates p, from either side of the wire.
func (p *secureParams) check() error {
	switch {
	case p.ScaleBits > maxScaleBits:
		return fmt.Errorf("%d fixed-point bits, at most %d", p.ScaleBits, maxScaleBits)
	case !(p.Clip > 0) || math.IsInf(p.Clip, 0):
		return fmt.Errorf("clip range %g is not a positive number", p.Clip)
	case p.MaxExamples == 0:
		return fmt.Errorf("a maximum of 0 examples per client")
	case p.MinSurvivors < 2:
		return fmt.Errorf("%d minimum survivors: a sum of fewer than 2 updates reveals them", p.MinSurvivors)
	case p.maxClients() < 2:
		return fmt.Errorf("clip %g · 2^%d · %d examples leaves no room for a sum of 2 clients in 63 bits", p.Clip, p.ScaleBits, p.MaxExamples)
	}
	return nil
}

// clipUnits is the largest fixed-point magnitude of one update element.
func (p *secureParams) clipUnits() float64 { return math.Ceil(math.Ldexp(p.Clip, int(p.ScaleBits))) }

// maxClients is how many clients' weighted updates fit in a sum without
// overflowing the signed 64-bit range: n·MaxExamples·clipUnits < 2^63.
func (p *secureParams) maxClients() int {
	per := float64(p.MaxExamples) * p.clipUnits()
	if per < 1 {
		per = 1
	}
	return int(math.Min(math.Ceil(math.Ldexp(1, 63)/per)-1, math.MaxInt32))
}

// encodeUpdate writes the fixed-point encoding of a client's weighted
// update into dst (len(weights)+1 elements): element j is
// examples·round(clip(w_j − g_j)·2^ScaleBits) as a two's-complement uint64,
// the last element is examples. It returns how many elements it clipped.
// Weights that are not finite are an error: they cannot be encoded.
func (p *secureParams) encodeUpdate(dst []uint64, weights, global []float32, examples uint64) (int, error) {
	if len(weights) != len(global) || len(dst) != len(weights)+1 {
		return 0, fmt.Errorf("encoding %d weights against %d global ones into %d values", len(weights), len(global), len(dst))
	}
	if examples == 0 || examples > p.MaxExamples {
		return 0, fmt.Errorf("%d examples, not in [1, %d]", examples, p.MaxExamples)
	}
	scale := math.Ldexp(1, int(p.ScaleBits))
	n := int64(examples)
	clipped := 0
	for j, w := range weights {
		d := float64(w) - float64(global[j])
		if math.IsNaN(d) || math.IsInf(d, 0) {
			return 0, fmt.Errorf("weight %d is %g: not a finite number", j, w)
		}
		if d > p.Clip {
			d, clipped = p.Clip, clipped+1
		} else if d < -p.Clip {
			d, clipped = -p.Clip, clipped+1
		}
		dst[j] = uint64(n * int64(math.RoundToEven(d*scale)))
	}
	dst[len(weights)] = examples
	return clipped, nil
}

// decodeMean turns an unmasked sum (len(global)+1 values) into the new
// weights: out_j = float32(g_j + Σ_i n_i·q_ij · 2^−ScaleBits / Σ_i n_i),
// computed in float64. It returns Σ_i n_i, and an error if the sum's
// weight is impossible for clients clients (a wrong seed or a client that
// lied about its count).
func (p *secureParams) decodeMean(out []float32, sum []uint64, global []float32, clients int) (uint64, error) {
	if len(sum) != len(global)+1 || len(out) != len(global) {
		return 0, fmt.Errorf("decoding a sum of %d values for %d weights", len(sum), len(global))
	}
	examples := sum[len(global)]
	if examples == 0 || examples > uint64(clients)*p.MaxExamples {
		return 0, fmt.Errorf("the unmasked sum weighs %d examples, impossible for %d clients (a wrong seed was revealed?)", examples, clients)
	}
	inv := math.Ldexp(1, -int(p.ScaleBits))
	total := float64(examples)
	for j, g := range global {
		out[j] = float32(float64(g) + float64(int64(sum[j]))*inv/total)
	}
	return examples, nil
}

// Masks.

// Domain-separation labels of the hashes below.
const (
	labelPair   = "ringo/fed pair mask v1"
	labelSelf   = "ringo/fed self mask v1"
	labelCommit = "ringo/fed self commit v1"
)

func hashSeed(label string, task uint64, parts ...[]byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(label))
	var t [8]byte
	binary.LittleEndian.PutUint64(t[:], task)
	h.Write(t[:])
	for _, p := range parts {
		h.Write(p)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// pairSeed is the mask seed of clients a and b in task, from their X25519
// shared secret: the same for both, whichever computes it.
func pairSeedOf(task, a, b uint64, shared []byte) [32]byte {
	lo, hi := min(a, b), max(a, b)
	var ids [16]byte
	binary.LittleEndian.PutUint64(ids[:], lo)
	binary.LittleEndian.PutUint64(ids[8:], hi)
	return hashSeed(labelPair, task, ids[:], shared)
}

// selfMaskKey is the key of a client's own mask, from its self seed.
func selfMaskKey(task uint64, seed [32]byte) [32]byte { return hashSeed(labelSelf, task, seed[:]) }

// selfCommit commits a client to its self seed before it sends its masked
// update, so that the server can check the seed it reveals later.
func selfCommit(task uint64, seed [32]byte) [32]byte { return hashSeed(labelCommit, task, seed[:]) }

// pairSign says whether client self adds (lower id) or subtracts (higher
// id) the mask it shares with peer: the two cancel in the sum.
func pairAdds(self, peer uint64) bool { return self < peer }

// masker expands seeds into masks: AES-256 in counter mode (zero IV) under
// a key derived from the seed, read as little-endian uint64s, added to or
// subtracted from a vector modulo 2^64. A masker keeps its keystream
// buffer; it is not safe for concurrent use.
type masker struct {
	buf []byte
}

const maskChunk = 8 << 10

// apply adds (or, with subtract, subtracts) the mask of key to v.
func (m *masker) apply(v []uint64, key [32]byte, subtract bool) {
	block, err := aes.NewCipher(key[:])
	if err != nil {
		panic(err) // unreachable: a 32-byte key is always valid
	}
	var iv [aes.BlockSize]byte
	ctr := cipher.NewCTR(block, iv[:])
	if m.buf == nil {
		m.buf = make([]byte, maskChunk)
	}
	for len(v) > 0 {
		n := min(len(v), maskChunk/8)
		b := m.buf[:8*n]
		clear(b)
		ctr.XORKeyStream(b, b)
		if subtract {
			for i := range n {
				v[i] -= binary.LittleEndian.Uint64(b[8*i:])
			}
		} else {
			for i := range n {
				v[i] += binary.LittleEndian.Uint64(b[8*i:])
			}
		}
		v = v[n:]
	}
}

// newSelfSeed draws a fresh self-mask seed.
func newSelfSeed() ([32]byte, error) {
	var s [32]byte
	_, err := rand.Read(s[:])
	return s, err
}

// newKey draws a fresh X25519 key pair for one task.
func newKey() (*ecdh.PrivateKey, error) { return ecdh.X25519().GenerateKey(rand.Reader) }

// agree computes the pair seed of self and peer from self's private key
// and peer's public key.
func agree(task, self, peer uint64, priv *ecdh.PrivateKey, peerKey [32]byte) ([32]byte, error) {
	pub, err := ecdh.X25519().NewPublicKey(peerKey[:])
	if err != nil {
		return [32]byte{}, fmt.Errorf("client %d's public key: %w", peer, err)
	}
	shared, err := priv.ECDH(pub)
	if err != nil {
		return [32]byte{}, fmt.Errorf("key agreement with client %d: %w", peer, err)
	}
	return pairSeedOf(task, self, peer, shared), nil
}
