package fed

import (
	"bytes"
	"encoding/binary"
	"math"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sampleMessages has one message of every kind, with every field set.
func sampleMessages() []message {
	var key, seed [32]byte
	for i := range key {
		key[i], seed[i] = byte(i), byte(255-i)
	}
	return []message{
		&joinMsg{Name: "hospital-7 ✓"},
		&welcomeMsg{ID: 1<<63 + 5},
		&fitMsg{Task: 77, Round: 3, Config: map[string]string{"epochs": "1", "lr": "0.05", "": "empty key"},
			Secure:  &secureParams{ScaleBits: 24, Clip: 16, MaxExamples: 1 << 20, MinSurvivors: 3},
			Weights: []float32{1, -2.5, float32(math.Inf(1)), math.Float32frombits(0x7fc00001)}},
		&fitMsg{Task: 78, Round: 4, Weights: []float32{0.5}},
		&publicKeyMsg{Task: 9, Key: key, Commit: seed},
		&keysMsg{Task: 10, Peers: []peerKey{{ID: 1, Key: key}, {ID: 4, Key: seed}}},
		&updateMsg{Task: 11, Examples: 600, Metrics: map[string]float64{"loss": 0.25, "accuracy": math.NaN()}, Weights: []float32{3, 4}},
		&maskedMsg{Task: 12, Vector: []uint64{0, math.MaxUint64, 1 << 40}},
		&unmaskMsg{Task: 13, Survivors: []uint64{1, 2, 9}, Dropped: []uint64{5}},
		&revealMsg{Task: 14, SelfSeed: seed, Pairs: []pairSeed{{ID: 5, Seed: key}, {ID: 6, Seed: seed}}},
		&failedMsg{Task: 15, Reason: "out of memory"},
		&byeMsg{Over: true, Reason: "training is over"},
		&byeMsg{Reason: "full"},
	}
}

// TestMessagesRoundTrip: every message decodes to itself, and its bytes
// are canonical (decoding and encoding again gives the same bytes).
func TestMessagesRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		b := encode(m)
		got, err := decodeMessage(m.kind(), b)
		require.NoError(t, err, "%v", m.kind())
		assert.Equal(t, b, encode(got), "%v", m.kind())
		if u, ok := m.(*updateMsg); ok { // NaN != NaN: compare the rest
			g := got.(*updateMsg)
			assert.Equal(t, u.Weights, g.Weights)
			assert.True(t, math.IsNaN(g.Metrics["accuracy"]))
			continue
		}
		if f, ok := m.(*fitMsg); ok && len(f.Weights) == 4 {
			g := got.(*fitMsg)
			assert.Equal(t, math.Float32bits(f.Weights[3]), math.Float32bits(g.Weights[3]), "NaN payload kept")
			assert.Equal(t, f.Config, g.Config)
			assert.Equal(t, f.Secure, g.Secure)
			continue
		}
		assert.Equal(t, m, got, "%v", m.kind())
	}
}

// TestDecodeRefusesBadPayloads: every proper prefix of every message, the
// message with a byte more, an unknown kind, and fields out of order or
// beyond their limits are errors, never panics.
func TestDecodeRefusesBadPayloads(t *testing.T) {
	for _, m := range sampleMessages() {
		b := encode(m)
		for n := range len(b) {
			_, err := decodeMessage(m.kind(), b[:n])
			require.ErrorIs(t, err, errMalformed, "%v cut to %d of %d bytes", m.kind(), n, len(b))
		}
		_, err := decodeMessage(m.kind(), append(bytes.Clone(b), 0))
		require.ErrorIs(t, err, errMalformed, "%v with a byte more", m.kind())
	}
	_, err := decodeMessage(0, nil)
	require.ErrorIs(t, err, errMalformed)
	_, err = decodeMessage(maxKind+1, nil)
	require.ErrorIs(t, err, errMalformed)

	// A count far beyond the payload is refused before anything is
	// allocated for it.
	huge := binary.LittleEndian.AppendUint64(nil, 1)
	huge = binary.LittleEndian.AppendUint32(huge, math.MaxUint32)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = decodeMessage(kindMasked, huge)
	runtime.ReadMemStats(&after)
	require.ErrorContains(t, err, "announced")
	assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(64<<10))

	for name, m := range map[string]message{
		"peers out of order":   &keysMsg{Task: 1, Peers: []peerKey{{ID: 4}, {ID: 1}}},
		"duplicate survivors":  &unmaskMsg{Task: 1, Survivors: []uint64{2, 2}},
		"dropped out of order": &unmaskMsg{Task: 1, Dropped: []uint64{3, 1}},
		"pairs out of order":   &revealMsg{Task: 1, Pairs: []pairSeed{{ID: 2}, {ID: 2}}},
		"name too long":        &joinMsg{Name: string(bytes.Repeat([]byte("x"), maxNameBytes+1))},
		"not UTF-8":            &failedMsg{Reason: "\xff\xfe"},
		"reason too long":      &byeMsg{Reason: string(bytes.Repeat([]byte("x"), maxStringBytes+1))},
	} {
		_, err := decodeMessage(m.kind(), encode(m))
		assert.ErrorIs(t, err, errMalformed, name)
	}
	// A secure flag other than 0 or 1.
	b := encode(&fitMsg{Task: 1, Round: 1})
	b[8+4+4] = 2
	_, err = decodeMessage(kindFit, b)
	assert.ErrorContains(t, err, "secure flag 2")
	// Unsorted config keys (swapped by hand).
	fit := encode(&fitMsg{Config: map[string]string{"a": "1", "b": "2"}})
	fit = bytes.Replace(fit, []byte("a\x01\x00\x00\x001"), []byte("c\x01\x00\x00\x001"), 1)
	_, err = decodeMessage(kindFit, fit)
	assert.ErrorContains(t, err, "ascending")
}

// FuzzDecodeMessage: no payload makes the decoder panic or allocate
// beyond its size, and whatever decodes encodes back to the same bytes.
func FuzzDecodeMessage(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(uint8(m.kind()), encode(m))
	}
	f.Add(uint8(kindMasked), []byte{1, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255})
	f.Fuzz(func(t *testing.T, kind uint8, payload []byte) {
		m, err := decodeMessage(msgKind(kind), payload)
		if err != nil {
			if m != nil {
				t.Fatalf("an error with a message: %v", err)
			}
			return
		}
		if got := encode(m); !bytes.Equal(got, payload) {
			t.Fatalf("%v: decoded %x, encoded back %x", m.kind(), payload, got)
		}
	})
}
