package fed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"unicode/utf8"
)

// The messages of the federated protocol. Each travels as the payload of
// one transport Data frame whose Sig.Kind is the message kind (see wire.go).
// Payloads are little-endian: integers fixed-width, a string is a uint32
// byte length and its UTF-8 bytes, a vector is a uint32 element count and
// its elements, a map is a uint32 count and its entries in ascending key
// order (keys unique). The encoding is canonical: decodeMessage accepts
// exactly the bytes encode produces, so decode(encode(m)) = m and
// encode(decode(b)) = b for every b that decodes.

// msgKind says what a message is.
type msgKind uint8

const (
	kindJoin      msgKind = iota + 1 // client → server: who I am
	kindWelcome                      // server → client: your id
	kindFit                          // server → client: train on these weights
	kindPublicKey                    // client → server: my key for this task (secure aggregation)
	kindKeys                         // server → client: the task's clients and their keys
	kindUpdate                       // client → server: my trained weights (plain)
	kindMasked                       // client → server: my masked fixed-point update
	kindUnmask                       // server → client: who survived, who dropped
	kindReveal                       // client → server: the seeds that remove the masks
	kindFailed                       // client → server: I could not do this task
	kindBye                          // server → client: training is over
	maxKind       = kindBye
)

func (k msgKind) String() string {
	names := [...]string{"", "join", "welcome", "fit", "public-key", "keys", "update", "masked-update", "unmask", "reveal", "failed", "bye"}
	if k > 0 && k <= maxKind {
		return names[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Limits of what a peer may send, so that no length read off the wire
// makes the decoder allocate more than the payload justifies.
const (
	maxNameBytes   = 256
	maxStringBytes = 4096
	maxMapEntries  = 256
)

// errMalformed is what a payload that is not a valid message fails with.
var errMalformed = errors.New("malformed message")

type message interface {
	kind() msgKind
	// appendTo appends the payload to b.
	appendTo(b []byte) []byte
}

type joinMsg struct {
	Name string
}

type welcomeMsg struct {
	ID uint64
}

// fitMsg gives a client its task: the global weights of a round.
type fitMsg struct {
	Task    uint64 // unique per attempt at a round
	Round   uint32
	Config  map[string]string
	Secure  *secureParams // nil: send the weights in the clear
	Weights []float32
}

// secureParams is what a client must know to mask its update.
type secureParams struct {
	ScaleBits    uint8   // fixed point: v travels as round(v·2^ScaleBits)
	Clip         float64 // each update element is clipped to [−Clip, Clip]
	MaxExamples  uint64  // the largest weight (sample count) a client may use
	MinSurvivors uint32  // a client unmasks no sum of fewer updates
}

type publicKeyMsg struct {
	Task   uint64
	Key    [32]byte // X25519 public key, fresh for the task
	Commit [32]byte // commitment to the self-mask seed (selfCommit)
}

type peerKey struct {
	ID  uint64
	Key [32]byte
}

type keysMsg struct {
	Task  uint64
	Peers []peerKey // ascending ID, unique
}

type updateMsg struct {
	Task     uint64
	Examples uint64
	Metrics  map[string]float64
	Weights  []float32
}

type maskedMsg struct {
	Task   uint64
	Vector []uint64 // the masked update, then the masked weight
}

type unmaskMsg struct {
	Task      uint64
	Survivors []uint64 // ascending, unique
	Dropped   []uint64 // ascending, unique
}

type pairSeed struct {
	ID   uint64
	Seed [32]byte
}

type revealMsg struct {
	Task     uint64
	SelfSeed [32]byte
	Pairs    []pairSeed // ascending ID, unique
}

type failedMsg struct {
	Task   uint64
	Reason string
}

type byeMsg struct {
	Over   bool // training is over; otherwise the client is turned away for now
	Reason string
}

func (*joinMsg) kind() msgKind      { return kindJoin }
func (*welcomeMsg) kind() msgKind   { return kindWelcome }
func (*fitMsg) kind() msgKind       { return kindFit }
func (*publicKeyMsg) kind() msgKind { return kindPublicKey }
func (*keysMsg) kind() msgKind      { return kindKeys }
func (*updateMsg) kind() msgKind    { return kindUpdate }
func (*maskedMsg) kind() msgKind    { return kindMasked }
func (*unmaskMsg) kind() msgKind    { return kindUnmask }
func (*revealMsg) kind() msgKind    { return kindReveal }
func (*failedMsg) kind() msgKind    { return kindFailed }
func (*byeMsg) kind() msgKind       { return kindBye }

// taskOf is the task a message belongs to (0 for those of no task).
func taskOf(m message) uint64 {
	switch m := m.(type) {
	case *fitMsg:
		return m.Task
	case *publicKeyMsg:
		return m.Task
	case *keysMsg:
		return m.Task
	case *updateMsg:
		return m.Task
	case *maskedMsg:
		return m.Task
	case *unmaskMsg:
		return m.Task
	case *revealMsg:
		return m.Task
	case *failedMsg:
		return m.Task
	}
	return 0
}

// Encoding.

func putU32(b []byte, v uint32) []byte { return binary.LittleEndian.AppendUint32(b, v) }
func putU64(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint64(b, v) }

func putString(b []byte, s string) []byte {
	return append(putU32(b, uint32(len(s))), s...)
}

func putFloats(b []byte, v []float32) []byte {
	b = putU32(b, uint32(len(v)))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

func putU64s(b []byte, v []uint64) []byte {
	b = putU32(b, uint32(len(v)))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint64(b, x)
	}
	return b
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (m *joinMsg) appendTo(b []byte) []byte    { return putString(b, m.Name) }
func (m *welcomeMsg) appendTo(b []byte) []byte { return putU64(b, m.ID) }
func (m *byeMsg) appendTo(b []byte) []byte {
	flag := byte(0)
	if m.Over {
		flag = 1
	}
	return putString(append(b, flag), m.Reason)
}

func (m *fitMsg) appendTo(b []byte) []byte {
	b = putU64(b, m.Task)
	b = putU32(b, m.Round)
	keys := sortedKeys(m.Config)
	b = putU32(b, uint32(len(keys)))
	for _, k := range keys {
		b = putString(putString(b, k), m.Config[k])
	}
	if m.Secure == nil {
		b = append(b, 0)
	} else {
		p := m.Secure
		b = append(b, 1, p.ScaleBits)
		b = putU64(b, math.Float64bits(p.Clip))
		b = putU64(b, p.MaxExamples)
		b = putU32(b, p.MinSurvivors)
	}
	return putFloats(b, m.Weights)
}

func (m *publicKeyMsg) appendTo(b []byte) []byte {
	b = putU64(b, m.Task)
	b = append(b, m.Key[:]...)
	return append(b, m.Commit[:]...)
}

func (m *keysMsg) appendTo(b []byte) []byte {
	b = putU64(b, m.Task)
	b = putU32(b, uint32(len(m.Peers)))
	for _, p := range m.Peers {
		b = putU64(b, p.ID)
		b = append(b, p.Key[:]...)
	}
	return b
}

func (m *updateMsg) appendTo(b []byte) []byte {
	b = putU64(b, m.Task)
	b = putU64(b, m.Examples)
	keys := sortedKeys(m.Metrics)
	b = putU32(b, uint32(len(keys)))
	for _, k := range keys {
		b = putU64(putString(b, k), math.Float64bits(m.Metrics[k]))
	}
	return putFloats(b, m.Weights)
}

func (m *maskedMsg) appendTo(b []byte) []byte {
	return putU64s(putU64(b, m.Task), m.Vector)
}

func (m *unmaskMsg) appendTo(b []byte) []byte {
	return putU64s(putU64s(putU64(b, m.Task), m.Survivors), m.Dropped)
}

func (m *revealMsg) appendTo(b []byte) []byte {
	b = putU64(b, m.Task)
	b = append(b, m.SelfSeed[:]...)
	b = putU32(b, uint32(len(m.Pairs)))
	for _, p := range m.Pairs {
		b = putU64(b, p.ID)
		b = append(b, p.Seed[:]...)
	}
	return b
}

func (m *failedMsg) appendTo(b []byte) []byte {
	return putString(putU64(b, m.Task), m.Reason)
}

// Decoding.

// reader takes fields off a payload. The first failure sticks: later reads
// return zero values, and err says what was wrong first.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, a ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", errMalformed, fmt.Sprintf(format, a...))
	}
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.fail("%s needs %d bytes, %d left", what, n, len(r.b))
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8(what string) uint8 {
	if b := r.take(1, what); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u32(what string) uint32 {
	if b := r.take(4, what); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (r *reader) u64(what string) uint64 {
	if b := r.take(8, what); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (r *reader) bytes32(dst *[32]byte, what string) {
	if b := r.take(32, what); b != nil {
		copy(dst[:], b)
	}
}

// count reads an element count and checks that that many elements of at
// least minSize bytes each can follow, before anything is allocated.
func (r *reader) count(minSize, limit int, what string) int {
	n := r.u32(what + " count")
	if r.err != nil {
		return 0
	}
	if limit > 0 && int64(n) > int64(limit) {
		r.fail("%d %s, at most %d allowed", n, what, limit)
		return 0
	}
	if int64(n)*int64(minSize) > int64(len(r.b)) {
		r.fail("%d %s announced, only %d bytes left", n, what, len(r.b))
		return 0
	}
	return int(n)
}

func (r *reader) str(limit int, what string) string {
	n := r.count(1, limit, what+" bytes")
	b := r.take(n, what)
	if r.err != nil {
		return ""
	}
	if !utf8.Valid(b) {
		r.fail("%s is not UTF-8", what)
		return ""
	}
	return string(b)
}

func (r *reader) floats(what string) []float32 {
	n := r.count(4, 0, what)
	b := r.take(4*n, what)
	if r.err != nil {
		return nil
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

func (r *reader) u64s(limit int, what string) []uint64 {
	n := r.count(8, limit, what)
	b := r.take(8*n, what)
	if r.err != nil {
		return nil
	}
	v := make([]uint64, n)
	for i := range v {
		v[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	return v
}

// ascendingIDs checks that ids are strictly ascending (so unique).
func (r *reader) ascendingIDs(ids []uint64, what string) {
	for i := 1; i < len(ids) && r.err == nil; i++ {
		if ids[i] <= ids[i-1] {
			r.fail("%s are not in strictly ascending order", what)
		}
	}
}

// decodeMessage parses the payload of a message of kind k. It never
// panics and never allocates more than a constant times len(b): any
// payload that is not exactly a message's canonical encoding is an error
// wrapping errMalformed.
func decodeMessage(k msgKind, b []byte) (message, error) {
	r := &reader{b: b}
	var m message
	switch k {
	case kindJoin:
		m = &joinMsg{Name: r.str(maxNameBytes, "name")}
	case kindWelcome:
		m = &welcomeMsg{ID: r.u64("id")}
	case kindFit:
		m = decodeFit(r)
	case kindPublicKey:
		v := &publicKeyMsg{Task: r.u64("task")}
		r.bytes32(&v.Key, "public key")
		r.bytes32(&v.Commit, "commitment")
		m = v
	case kindKeys:
		v := &keysMsg{Task: r.u64("task")}
		n := r.count(40, 0, "peers")
		if r.err == nil {
			v.Peers = make([]peerKey, n)
		}
		for i := range v.Peers {
			v.Peers[i].ID = r.u64("peer id")
			r.bytes32(&v.Peers[i].Key, "peer key")
			if i > 0 && r.err == nil && v.Peers[i].ID <= v.Peers[i-1].ID {
				r.fail("peers are not in strictly ascending order of id")
			}
		}
		m = v
	case kindUpdate:
		v := &updateMsg{Task: r.u64("task"), Examples: r.u64("examples")}
		n := r.count(12, maxMapEntries, "metrics")
		if r.err == nil && n > 0 {
			v.Metrics = make(map[string]float64, n)
		}
		prev := ""
		for i := range n {
			key := r.str(maxStringBytes, "metric name")
			val := math.Float64frombits(r.u64("metric value"))
			if r.err != nil {
				break
			}
			if i > 0 && key <= prev {
				r.fail("metrics are not in strictly ascending order of name")
			}
			v.Metrics[key], prev = val, key
		}
		v.Weights = r.floats("weights")
		m = v
	case kindMasked:
		v := &maskedMsg{Task: r.u64("task")}
		v.Vector = r.u64s(0, "masked values")
		m = v
	case kindUnmask:
		v := &unmaskMsg{Task: r.u64("task")}
		v.Survivors = r.u64s(0, "survivors")
		r.ascendingIDs(v.Survivors, "survivors")
		v.Dropped = r.u64s(0, "dropped clients")
		r.ascendingIDs(v.Dropped, "dropped clients")
		m = v
	case kindReveal:
		v := &revealMsg{Task: r.u64("task")}
		r.bytes32(&v.SelfSeed, "self seed")
		n := r.count(40, 0, "pair seeds")
		if r.err == nil {
			v.Pairs = make([]pairSeed, n)
		}
		for i := range v.Pairs {
			v.Pairs[i].ID = r.u64("pair id")
			r.bytes32(&v.Pairs[i].Seed, "pair seed")
			if i > 0 && r.err == nil && v.Pairs[i].ID <= v.Pairs[i-1].ID {
				r.fail("pair seeds are not in strictly ascending order of id")
			}
		}
		m = v
	case kindFailed:
		m = &failedMsg{Task: r.u64("task"), Reason: r.str(maxStringBytes, "reason")}
	case kindBye:
		v := &byeMsg{}
		switch over := r.u8("over flag"); {
		case r.err != nil:
		case over > 1:
			r.fail("over flag %d", over)
		default:
			v.Over = over == 1
		}
		v.Reason = r.str(maxStringBytes, "reason")
		m = v
	default:
		return nil, fmt.Errorf("%w: unknown kind %d", errMalformed, uint8(k))
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d bytes after the end", len(r.b))
	}
	if r.err != nil {
		return nil, fmt.Errorf("%v message: %w", k, r.err)
	}
	return m, nil
}

func decodeFit(r *reader) *fitMsg {
	v := &fitMsg{Task: r.u64("task"), Round: r.u32("round")}
	n := r.count(8, maxMapEntries, "config entries")
	if r.err == nil && n > 0 {
		v.Config = make(map[string]string, n)
	}
	prev := ""
	for i := range n {
		key := r.str(maxStringBytes, "config key")
		val := r.str(maxStringBytes, "config value")
		if r.err != nil {
			break
		}
		if i > 0 && key <= prev {
			r.fail("config keys are not in strictly ascending order")
		}
		v.Config[key], prev = val, key
	}
	switch secure := r.u8("secure flag"); {
	case r.err != nil:
	case secure == 1:
		p := &secureParams{ScaleBits: r.u8("scale bits")}
		p.Clip = math.Float64frombits(r.u64("clip"))
		p.MaxExamples = r.u64("max examples")
		p.MinSurvivors = r.u32("min survivors")
		v.Secure = p
	case secure != 0:
		r.fail("secure flag %d", secure)
	}
	v.Weights = r.floats("weights")
	return v
}

// encode returns m's payload.
func encode(m message) []byte { return m.appendTo(nil) }
