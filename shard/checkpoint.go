package shard

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/rankdesc"
)

// The files and metadata keys of the checkpoint layout (see the package
// documentation).
const (
	metaFile = "meta.ckpt"

	keyPrefix   = "shard."
	keyFormat   = "shard.format" // "1"
	keyID       = "shard.id"     // the save's id, 16 hex digits
	keyWorld    = "shard.world"  // shard files, one per rank of a shard group
	keyRank     = "shard.rank"   // in a shard file: whose shard it is
	keyStrategy = "shard.strategy"
	keyParams   = "shard.params" // JSON [[name, length], ...], in unit order
	keyUnits    = "shard.units"  // JSON [parameters per unit, ...]
	keySteps    = "shard.optimizer_steps"
	keyState    = "shard.optimizer_state" // JSON [state name, ...]

	formatVersion = "1"
)

// shardFile names rank's file of a save.
func shardFile(id string, rank, world int) string {
	return fmt.Sprintf("shard-%s-%05d-of-%05d.ckpt", id, rank, world)
}

// between checks that the FSDP is between steps (no unit gathered) and
// waits for every collective in flight, so that the caller's goroutine may
// use the private communicators directly.
func (fs *FSDP) between(ctx context.Context, call string) error {
	if err := fs.usable(); err != nil {
		return fmt.Errorf("shard: %s on rank %d: %w", call, fs.comm.Rank(), err)
	}
	for _, un := range fs.units {
		if un.gathered {
			return fmt.Errorf("shard: %s on rank %d: %w", call, fs.comm.Rank(), fs.misuse("unit %d is gathered: call it between steps", un.index))
		}
	}
	for _, un := range fs.units {
		for _, o := range []*op{&un.gather, &un.reduce} {
			if err := fs.wait(ctx, o); err != nil {
				return fmt.Errorf("shard: %s on rank %d: %w", call, fs.comm.Rank(), err)
			}
		}
		if un.slot >= 0 {
			fs.slots[un.slot].unit, un.slot = -1, -1
		}
	}
	fs.want, fs.wantNext = fs.want[:0], 0
	return nil
}

// writer reports whether this rank writes its shard: under Hybrid only the
// first group does (the others hold the same shards).
func (fs *FSDP) writer() bool { return fs.replC == nil || fs.replC.Rank() == 0 }

// engineMeta is the metadata every checkpoint of the FSDP carries, added to
// the caller's.
func (fs *FSDP) engineMeta(user map[string]string) (map[string]string, error) {
	m := make(map[string]string, len(user)+8)
	for k, v := range user {
		if strings.HasPrefix(k, keyPrefix) {
			return nil, fmt.Errorf("%w: metadata key %q: the %q prefix is the FSDP's", checkpoint.ErrInvalid, k, keyPrefix)
		}
		m[k] = v
	}
	var params [][2]any
	var perUnit []int
	for _, un := range fs.units {
		perUnit = append(perUnit, len(un.params))
		for j, p := range un.params {
			params = append(params, [2]any{p.Name, un.offs[j+1] - un.offs[j]})
		}
	}
	pj, _ := json.Marshal(params)
	uj, _ := json.Marshal(perUnit)
	names := fs.optNames
	if names == nil {
		names = []string{}
	}
	sj, _ := json.Marshal(names)
	m[keyFormat] = formatVersion
	m[keyStrategy] = fs.opts.Strategy.String()
	m[keyParams] = string(pj)
	m[keyUnits] = string(uj)
	m[keySteps] = strconv.Itoa(fs.steps)
	m[keyState] = string(sj)
	return m, nil
}

// userPart is ck without its tensors' data shared: the header fields and
// the caller's tensors, with the FSDP's metadata.
func (fs *FSDP) userPart(ck *checkpoint.Checkpoint) (*checkpoint.Checkpoint, error) {
	out := &checkpoint.Checkpoint{}
	var user map[string]string
	if ck != nil {
		out.Step, out.Epoch, out.RNG = ck.Step, ck.Epoch, ck.RNG
		user = ck.Meta
		names := make(map[string]bool, len(fs.params))
		for _, p := range fs.params {
			names[p.Name] = true
		}
		for _, t := range ck.Tensors {
			if names[t.Name] || fs.isStateName(t.Name) {
				return nil, fmt.Errorf("%w: tensor %q has the name of a parameter or of its optimizer state", checkpoint.ErrInvalid, t.Name)
			}
			out.Tensors = append(out.Tensors, t)
		}
	}
	var err error
	out.Meta, err = fs.engineMeta(user)
	return out, err
}

func (fs *FSDP) isStateName(name string) bool {
	for _, p := range fs.params {
		if rest, ok := strings.CutPrefix(name, p.Name+"."); ok && slices.Contains(fs.optNames, rest) {
			return true
		}
	}
	return false
}

// SaveFull writes one checkpoint file at path, on rank 0: ck's fields and
// tensors, every parameter whole (named by its Name) and the optimizer
// state unsharded, one whole tensor per parameter and state value
// ("<param>.<state name>", e.g. fc0.weight.exp_avg: the names and layout of
// the model library's ParamOptimizer, so parallel.DataParallel and a single
// process load it), plus the FSDP's metadata ("shard.*" keys). Rank 0
// gathers the shards unit by unit and holds the whole model while it
// writes; the write is atomic (checkpoint.Save). It is a collective call,
// made between steps, and every rank returns the same verdict.
func (fs *FSDP) SaveFull(ctx context.Context, path string, ck *checkpoint.Checkpoint) error {
	if err := fs.between(ctx, "SaveFull"); err != nil {
		return err
	}
	root := fs.comm.Rank() == 0
	var out *checkpoint.Checkpoint
	var local error
	if root {
		out, local = fs.userPart(ck)
	}
	k := fs.optK
	var tensors []checkpoint.Tensor // parameters and state first, the caller's tensors last
	for _, un := range fs.units {
		params, state, err := fs.collect(ctx, un, root)
		if err != nil {
			return fmt.Errorf("shard: SaveFull on rank %d: %w", fs.comm.Rank(), fs.fail(err))
		}
		if !root || local != nil {
			continue
		}
		for j, p := range un.params {
			lo, hi := un.offs[j], un.offs[j+1]
			tensors = append(tensors, checkpoint.Tensor{Name: p.Name, Data: params[lo:hi]})
			for s, name := range fs.optNames {
				t := checkpoint.Tensor{Name: p.Name + "." + name, Data: make([]float32, hi-lo)}
				for i := range t.Data {
					t.Data[i] = state[k*(lo+i)+s]
				}
				tensors = append(tensors, t)
			}
		}
	}
	if root && local == nil {
		out.Tensors = append(tensors, out.Tensors...)
	}
	if root && local == nil {
		local = checkpoint.Save(path, out)
	}
	return agreeOn(ctx, fs.comm, local, fmt.Sprintf("shard: SaveFull(%s) on rank %d", path, fs.comm.Rank()))
}

// collect returns, on root, un's full parameters and full interleaved
// optimizer state (nil before the first Step), gathered from the shard
// group (group 0's under Hybrid); other ranks get nil.
func (fs *FSDP) collect(ctx context.Context, un *unit, root bool) (params, state []float32, err error) {
	k := fs.optK
	if fs.opts.Strategy == NoShard {
		if root {
			params = slices.Clone(un.full[:un.size])
			if fs.state() {
				state = slices.Clone(un.state)
			}
		}
		return params, state, nil
	}
	if !fs.writer() {
		return nil, nil, nil
	}
	if root {
		params = make([]float32, un.padded)
		if fs.state() {
			state = make([]float32, k*un.padded)
		}
	}
	if un.full != nil {
		if root {
			copy(params, un.full)
		}
	} else if err := collective.Gather(ctx, fs.shardC, un.data, params, 0); err != nil {
		return nil, nil, err
	}
	if fs.state() {
		if err := collective.Gather(ctx, fs.shardC, un.state, state, 0); err != nil {
			return nil, nil, err
		}
	}
	return params, state, nil
}

// SaveSharded writes a sharded checkpoint into the directory dir (made if
// need be), which every rank must see (a shared file system): each rank
// writes the file of its own shard, parameters and optimizer state, and
// nobody gathers anything; then rank 0 commits the save by writing
// meta.ckpt (ck's fields and tensors and the FSDP's metadata) atomically.
// Until then the previous checkpoint in dir stays whole and is the one
// Load reads; afterwards rank 0 removes the previous save's shard files.
// Under Hybrid only the first group writes. It is a collective call, made
// between steps, and every rank returns the same verdict. The layout is in
// the package documentation.
func (fs *FSDP) SaveSharded(ctx context.Context, dir string, ck *checkpoint.Checkpoint) error {
	if err := fs.between(ctx, "SaveSharded"); err != nil {
		return err
	}
	rank := fs.comm.Rank()
	what := fmt.Sprintf("shard: SaveSharded(%s) on rank %d", dir, rank)
	idBuf := []int64{0}
	if rank == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		idBuf[0] = int64(binary.LittleEndian.Uint64(b[:]))
	}
	if err := collective.Broadcast(ctx, fs.comm, idBuf, 0); err != nil {
		return fmt.Errorf("%s: %w", what, fs.fail(err))
	}
	id := fmt.Sprintf("%016x", uint64(idBuf[0]))
	var meta *checkpoint.Checkpoint
	local := os.MkdirAll(dir, 0o755)
	if rank == 0 && local == nil {
		meta, local = fs.userPart(ck)
	}
	if local == nil && fs.writer() {
		local = checkpoint.Save(filepath.Join(dir, shardFile(id, fs.rank, fs.nShard)), fs.shardCheckpoint(id))
	}
	if err := agreeOn(ctx, fs.comm, local, what); err != nil {
		return err
	}
	if rank == 0 {
		meta.Meta[keyID] = id
		meta.Meta[keyWorld] = strconv.Itoa(fs.nShard)
		local = checkpoint.Save(filepath.Join(dir, metaFile), meta)
	}
	if err := agreeOn(ctx, fs.comm, local, what); err != nil {
		return err
	}
	if rank == 0 {
		removeStale(dir, id)
	}
	return nil
}

// shardCheckpoint is this rank's shard file: for every parameter, the part
// of it in this rank's shard, and the same part of each optimizer state
// value, as slices of the whole tensors.
func (fs *FSDP) shardCheckpoint(id string) *checkpoint.Checkpoint {
	c := &checkpoint.Checkpoint{Meta: map[string]string{
		keyFormat: formatVersion, keyID: id, keyRank: strconv.Itoa(fs.rank), keyWorld: strconv.Itoa(fs.nShard),
	}}
	k := fs.optK
	for _, un := range fs.units {
		// Under NoShard too each rank writes only its part of what all hold.
		lo, hi := un.lo, un.hi
		for j, p := range un.params {
			a, b := max(lo, un.offs[j]), min(hi, un.offs[j+1])
			if a >= b {
				continue
			}
			n := un.offs[j+1] - un.offs[j]
			var data []float32
			if un.full != nil {
				data = un.full[a:b]
			} else {
				data = un.data[a-un.lo : b-un.lo]
			}
			c.Tensors = append(c.Tensors, checkpoint.Tensor{Name: p.Name, Shape: []int{n}, Offset: a - un.offs[j], Data: data})
			for s, name := range fs.optNames {
				st := make([]float32, b-a)
				base := a - un.lo // state index of element a
				if fs.opts.Strategy == NoShard {
					base = a
				}
				for i := range st {
					st[i] = un.state[k*(base+i)+s]
				}
				c.Tensors = append(c.Tensors, checkpoint.Tensor{Name: p.Name + "." + name, Shape: []int{n}, Offset: a - un.offs[j], Data: st})
			}
		}
	}
	return c
}

// removeStale removes the shard files of saves other than id, and the
// temporary files of interrupted ones.
func removeStale(dir, id string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "shard-") && !strings.HasPrefix(name, "shard-"+id+"-") {
			_ = os.Remove(filepath.Join(dir, name))
		}
		if strings.HasPrefix(name, metaFile+".tmp-") {
			_ = os.Remove(filepath.Join(dir, name))
		}
	}
}

// Load restores the parameters, the optimizer state (for opt, which may be
// nil to restore the parameters only) and the number of optimizer steps
// from a checkpoint at path, and returns its fields, metadata and the
// caller's tensors. path is either a file (a full checkpoint: SaveFull's,
// or parallel.DataParallel's, or a single process's with the model
// library's state names; rank 0 reads it and sends every rank its part)
// or a directory holding a sharded checkpoint (SaveSharded's, of any
// number of ranks, strategy or unit grouping: each rank reads only the
// shard files that overlap its own shard, and so reshards it).
//
// It is a collective call, made between steps. Every rank returns the same
// verdict: an error matching fs.ErrNotExist when there is no checkpoint,
// checkpoint.ErrCorrupt for a damaged, truncated or inconsistent one (a
// shard file missing or of another save), checkpoint.ErrInvalid for one of
// another model or optimizer (naming what differs). On error nothing is
// changed, unless a collective fails (a lost rank), which ends the FSDP.
func (fs *FSDP) Load(ctx context.Context, path string, opt Optimizer) (*checkpoint.Checkpoint, error) {
	if err := fs.between(ctx, "Load"); err != nil {
		return nil, err
	}
	what := fmt.Sprintf("shard: Load(%s) on rank %d", path, fs.comm.Rank())
	if opt != nil {
		k := opt.StateLen(1)
		if k < 0 || len(opt.StateNames()) != k || fs.state() && k != fs.optK {
			return nil, fmt.Errorf("%s: %w", what, fs.misuse("the optimizer keeps %d state values per element and names %d (the state so far has %d)", k, len(opt.StateNames()), fs.optK))
		}
	}
	// Rank 0 decides which kind of checkpoint path is, for every rank.
	kind := []int64{0} // 1: a directory, 0: a file
	if fs.comm.Rank() == 0 {
		if st, err := os.Stat(path); err == nil && st.IsDir() {
			kind[0] = 1
		}
	}
	if err := collective.Broadcast(ctx, fs.comm, kind, 0); err != nil {
		return nil, fmt.Errorf("%s: %w", what, fs.fail(err))
	}
	var ck *checkpoint.Checkpoint
	var err error
	if kind[0] == 1 {
		ck, err = fs.loadSharded(ctx, path, opt, what)
	} else {
		ck, err = fs.loadFull(ctx, path, opt, what)
	}
	if err != nil {
		return nil, err
	}
	for _, un := range fs.units {
		un.accumulating, un.reduced = false, false
		if fs.opts.Strategy.regathers() {
			fs.issue(&un.gather, un, request{kind: allGather, send: un.data, recv: un.full})
		}
	}
	return ck, nil
}

// loaded is a checkpoint's contents for this rank, checked, not applied
// yet.
type loaded struct {
	data   [][]float32 // per unit: what fs keeps (the shard, or the full params)
	state  [][]float32 // per unit: the optimizer state of data, nil for none
	steps  int
	names  []string
	fields *checkpoint.Checkpoint
}

// apply makes l the FSDP's parameters and optimizer state.
func (fs *FSDP) apply(l *loaded, opt Optimizer) {
	for u, un := range fs.units {
		if fs.opts.Strategy == NoShard {
			copy(un.full, l.data[u])
		} else {
			copy(un.data, l.data[u])
		}
	}
	if opt == nil {
		return
	}
	if !fs.state() {
		fs.allocState(opt)
	}
	for u, un := range fs.units {
		if l.state != nil {
			copy(un.state, l.state[u])
		} else {
			clear(un.state)
		}
	}
	fs.steps = l.steps
}

// extent is the range of unit elements this rank keeps: its shard, or the
// whole unit under NoShard.
func (fs *FSDP) extent(un *unit) (int, int) {
	if fs.opts.Strategy == NoShard {
		return 0, un.size
	}
	return un.lo, un.hi
}

// newLoaded makes zero buffers for what this rank keeps.
func (fs *FSDP) newLoaded(k int) *loaded {
	l := &loaded{}
	for _, un := range fs.units {
		n := un.shard
		if fs.opts.Strategy == NoShard {
			n = un.size
		}
		l.data = append(l.data, make([]float32, n))
		if k > 0 {
			l.state = append(l.state, make([]float32, k*n))
		}
	}
	return l
}

// loadFull is Load of a file: rank 0 reads and checks it, then sends every
// rank each unit's parameters and state.
func (fs *FSDP) loadFull(ctx context.Context, path string, opt Optimizer, what string) (*checkpoint.Checkpoint, error) {
	root := fs.comm.Rank() == 0
	var ck *checkpoint.Checkpoint
	var local error
	var names []string
	steps := 0
	if root {
		ck, local = checkpoint.Load(path)
		if local == nil {
			steps, names, local = fs.checkFull(ck, opt)
		}
	}
	if err := agreeOn(ctx, fs.comm, local, what); err != nil {
		return nil, err
	}
	// The fields and the caller's tensors, for every rank.
	var head []byte
	if root {
		rest := &checkpoint.Checkpoint{Step: ck.Step, Epoch: ck.Epoch, RNG: ck.RNG, Meta: ck.Meta}
		for _, t := range ck.Tensors {
			if !fs.isLoadedName(t.Name, names) {
				rest.Tensors = append(rest.Tensors, t)
			}
		}
		rest.Meta = maps.Clone(rest.Meta)
		if rest.Meta == nil {
			rest.Meta = map[string]string{}
		}
		rest.Meta[keySteps] = strconv.Itoa(steps)
		var err error
		if head, err = checkpoint.Marshal(rest); err != nil {
			return nil, fmt.Errorf("%s: %w", what, fs.fail(err))
		}
	}
	if err := rankdesc.Broadcast(ctx, fs.comm, &head); err != nil {
		return nil, fmt.Errorf("%s: %w", what, fs.fail(err))
	}
	rest, err := checkpoint.Unmarshal(head)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, fs.fail(err))
	}
	steps, _ = strconv.Atoi(rest.Meta[keySteps])
	k := 0
	if opt != nil {
		k = opt.StateLen(1)
	}
	l := fs.newLoaded(k)
	l.steps = steps
	byName := map[string]*checkpoint.Tensor{}
	if root {
		for i := range ck.Tensors {
			byName[ck.Tensors[i].Name] = &ck.Tensors[i]
		}
	}
	optNames := []string(nil)
	if opt != nil {
		optNames = opt.StateNames()
	}
	buf := make([]float32, (1+k)*fs.maxPadded)
	for u, un := range fs.units {
		params, state := buf[:un.padded], buf[un.padded:un.padded+k*un.padded]
		clear(buf)
		if root {
			for j, p := range un.params {
				copy(params[un.offs[j]:], byName[p.Name].Data)
				if names == nil {
					continue
				}
				for s, name := range optNames {
					for i, v := range byName[p.Name+"."+name].Data {
						state[k*(un.offs[j]+i)+s] = v
					}
				}
			}
		}
		if err := collective.Broadcast(ctx, fs.comm, buf[:(1+k)*un.padded], 0); err != nil {
			return nil, fmt.Errorf("%s: %w", what, fs.fail(err))
		}
		lo, _ := fs.extent(un)
		copy(l.data[u], params[lo:])
		if k > 0 {
			copy(l.state[u], state[k*lo:])
		}
	}
	fs.apply(l, opt)
	return rest, nil
}

// isLoadedName says whether a tensor is one Load takes: a parameter, or a
// parameter's state among names.
func (fs *FSDP) isLoadedName(name string, names []string) bool {
	for _, p := range fs.params {
		if name == p.Name {
			return true
		}
		if rest, ok := strings.CutPrefix(name, p.Name+"."); ok && slices.Contains(names, rest) {
			return true
		}
	}
	return false
}

// checkFull checks a full checkpoint against the model and opt, and
// returns its optimizer step count and the state names it has (nil when
// it has no state, which is allowed only before the first step).
func (fs *FSDP) checkFull(ck *checkpoint.Checkpoint, opt Optimizer) (int, []string, error) {
	steps := int(ck.Step)
	if v, ok := ck.Meta[keySteps]; ok {
		var err error
		if steps, err = strconv.Atoi(v); err != nil || steps < 0 {
			return 0, nil, fmt.Errorf("%w: %s = %q", checkpoint.ErrCorrupt, keySteps, v)
		}
	}
	for _, un := range fs.units {
		for j, p := range un.params {
			if _, err := ck.Lookup(p.Name, un.offs[j+1]-un.offs[j]); err != nil {
				return 0, nil, fmt.Errorf("the checkpoint is not of this model: %w", err)
			}
		}
	}
	if opt == nil || len(opt.StateNames()) == 0 {
		return steps, nil, nil
	}
	names := opt.StateNames()
	has := 0
	for _, p := range fs.params {
		for _, name := range names {
			if ck.Find(p.Name+"."+name) != nil {
				has++
			}
		}
	}
	if has == 0 && steps == 0 {
		return 0, nil, nil // saved before the first step
	}
	for _, un := range fs.units {
		for j, p := range un.params {
			for _, name := range names {
				if _, err := ck.Lookup(p.Name+"."+name, un.offs[j+1]-un.offs[j]); err != nil {
					return 0, nil, fmt.Errorf("the checkpoint has no %v optimizer state of this model: %w", names, err)
				}
			}
		}
	}
	return steps, names, nil
}

// layoutOf is a sharded checkpoint's layout, read from its meta.ckpt.
type layoutOf struct {
	id     string
	world  int
	steps  int
	names  []string // optimizer state names
	params map[string]paramAt
	sizes  []int // per unit: elements
}

// paramAt is where a parameter lies in the saved layout.
type paramAt struct {
	unit, off, len int
}

// shardLen is the saved unit u's shard length.
func (l *layoutOf) shardLen(u int) int { return (l.sizes[u] + l.world - 1) / l.world }

// parseLayout reads the FSDP metadata of a sharded checkpoint's meta.ckpt.
func parseLayout(meta map[string]string) (*layoutOf, error) {
	bad := func(key string) error {
		return fmt.Errorf("%w: meta.ckpt: %s = %q", checkpoint.ErrCorrupt, key, meta[key])
	}
	if v, ok := meta[keyFormat]; !ok {
		return nil, fmt.Errorf("%w: meta.ckpt is not a sharded checkpoint's (no %s)", checkpoint.ErrCorrupt, keyFormat)
	} else if v != formatVersion {
		return nil, fmt.Errorf("%w: sharded layout %q (this code reads %q)", checkpoint.ErrVersion, v, formatVersion)
	}
	l := &layoutOf{id: meta[keyID], params: map[string]paramAt{}}
	var err error
	if len(l.id) != 16 || strings.Trim(l.id, "0123456789abcdef") != "" {
		return nil, bad(keyID)
	}
	if l.world, err = strconv.Atoi(meta[keyWorld]); err != nil || l.world < 1 {
		return nil, bad(keyWorld)
	}
	if l.steps, err = strconv.Atoi(meta[keySteps]); err != nil || l.steps < 0 {
		return nil, bad(keySteps)
	}
	if json.Unmarshal([]byte(meta[keyState]), &l.names) != nil {
		return nil, bad(keyState)
	}
	var params [][2]json.RawMessage
	var perUnit []int
	if json.Unmarshal([]byte(meta[keyParams]), &params) != nil {
		return nil, bad(keyParams)
	}
	if json.Unmarshal([]byte(meta[keyUnits]), &perUnit) != nil {
		return nil, bad(keyUnits)
	}
	i := 0
	for u, np := range perUnit {
		if np < 1 || i+np > len(params) {
			return nil, bad(keyUnits)
		}
		off := 0
		for range np {
			var name string
			var n int
			if json.Unmarshal(params[i][0], &name) != nil || json.Unmarshal(params[i][1], &n) != nil || n < 0 {
				return nil, bad(keyParams)
			}
			if _, dup := l.params[name]; dup {
				return nil, bad(keyParams)
			}
			l.params[name] = paramAt{unit: u, off: off, len: n}
			off += n
			i++
		}
		l.sizes = append(l.sizes, off)
	}
	if i != len(params) {
		return nil, bad(keyUnits)
	}
	return l, nil
}

// loadSharded is Load of a directory: every rank reads meta.ckpt and the
// shard files that overlap what it keeps.
func (fs *FSDP) loadSharded(ctx context.Context, dir string, opt Optimizer, what string) (*checkpoint.Checkpoint, error) {
	l, meta, local := fs.readSharded(dir, opt)
	if err := agreeOn(ctx, fs.comm, local, what); err != nil {
		return nil, err
	}
	fs.apply(l, opt)
	return meta, nil
}

// readSharded reads and checks what this rank needs of the sharded
// checkpoint in dir, changing nothing.
func (fs *FSDP) readSharded(dir string, opt Optimizer) (*loaded, *checkpoint.Checkpoint, error) {
	meta, err := checkpoint.Load(filepath.Join(dir, metaFile))
	if err != nil {
		return nil, nil, err
	}
	lay, err := parseLayout(meta.Meta)
	if err != nil {
		return nil, nil, err
	}
	// The same parameters, of the same lengths; the grouping into units
	// and the order may differ.
	if len(lay.params) != len(fs.params) {
		return nil, nil, fmt.Errorf("%w: the checkpoint is not of this model: it has %d parameters, the model %d", checkpoint.ErrInvalid, len(lay.params), len(fs.params))
	}
	for _, un := range fs.units {
		for j, p := range un.params {
			at, ok := lay.params[p.Name]
			switch {
			case !ok:
				return nil, nil, fmt.Errorf("%w: the checkpoint is not of this model: it has no parameter %q", checkpoint.ErrInvalid, p.Name)
			case at.len != un.offs[j+1]-un.offs[j]:
				return nil, nil, fmt.Errorf("%w: the checkpoint is not of this model: parameter %q has %d values in it, %d here", checkpoint.ErrInvalid, p.Name, at.len, un.offs[j+1]-un.offs[j])
			}
		}
	}
	var names []string
	k := 0
	if opt != nil {
		k = opt.StateLen(1)
		names = opt.StateNames()
		switch {
		case len(lay.names) == 0 && lay.steps == 0:
			names = nil // saved before the first step: the state is zero
		case !slices.Equal(lay.names, names):
			return nil, nil, fmt.Errorf("%w: the checkpoint's optimizer state is %q, this optimizer's %q", checkpoint.ErrInvalid, lay.names, names)
		}
	}
	l := fs.newLoaded(k)
	l.steps = lay.steps

	// What this rank needs: per parameter, a range [a, b) of it, and
	// where that goes; and which saved ranks hold it.
	type need struct {
		u, j, a, b int
	}
	var needs []need
	files := map[int]bool{}
	for u, un := range fs.units {
		lo, hi := fs.extent(un)
		for j, p := range un.params {
			a, b := max(lo, un.offs[j])-un.offs[j], min(hi, un.offs[j+1])-un.offs[j]
			if a >= b {
				continue
			}
			needs = append(needs, need{u, j, a, b})
			at := lay.params[p.Name]
			s := lay.shardLen(at.unit)
			for r := (at.off + a) / s; r <= (at.off+b-1)/s; r++ {
				files[r] = true
			}
		}
	}
	for _, r := range slices.Sorted(maps.Keys(files)) {
		name := shardFile(lay.id, r, lay.world)
		sf, err := checkpoint.Load(filepath.Join(dir, name))
		if errors.Is(err, iofs.ErrNotExist) {
			return nil, nil, fmt.Errorf("%w: shard file %s is missing", checkpoint.ErrCorrupt, name)
		}
		if err != nil {
			return nil, nil, err
		}
		if sf.Meta[keyID] != lay.id || sf.Meta[keyRank] != strconv.Itoa(r) || sf.Meta[keyWorld] != strconv.Itoa(lay.world) {
			return nil, nil, fmt.Errorf("%w: %s says it is rank %s of %s of save %s, not rank %d of %d of save %s",
				checkpoint.ErrCorrupt, name, sf.Meta[keyRank], sf.Meta[keyWorld], sf.Meta[keyID], r, lay.world, lay.id)
		}
		byName := make(map[string]*checkpoint.Tensor, len(sf.Tensors))
		for i := range sf.Tensors {
			byName[sf.Tensors[i].Name] = &sf.Tensors[i]
		}
		for _, nd := range needs {
			un := fs.units[nd.u]
			p := un.params[nd.j]
			at := lay.params[p.Name]
			s := lay.shardLen(at.unit)
			// What file r holds of p, intersected with what is needed.
			a, b := max(nd.a, r*s-at.off), min(nd.b, (r+1)*s-at.off)
			if a >= b {
				continue
			}
			lo, _ := fs.extent(un)
			dst := un.offs[nd.j] + a - lo // index in l.data[nd.u]
			if err := copySlice(byName, name, p.Name, at.len, a, b, l.data[nd.u][dst:], 1, 0); err != nil {
				return nil, nil, err
			}
			for si, sn := range names {
				if err := copySlice(byName, name, p.Name+"."+sn, at.len, a, b, l.state[nd.u][k*dst:], k, si); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	if names != nil {
		l.names = names
	} else if k > 0 {
		l.state = nil
	}
	rest := &checkpoint.Checkpoint{Step: meta.Step, Epoch: meta.Epoch, RNG: meta.RNG, Meta: meta.Meta, Tensors: meta.Tensors}
	return l, rest, nil
}

// copySlice copies elements [a, b) of the tensor called name (of n
// elements) from a shard file's tensors to dst[stride·i + at], i from 0.
func copySlice(byName map[string]*checkpoint.Tensor, file, name string, n, a, b int, dst []float32, stride, at int) error {
	t := byName[name]
	switch {
	case t == nil:
		return fmt.Errorf("%w: %s has no slice of %q", checkpoint.ErrCorrupt, file, name)
	case len(t.Shape) != 1 || t.Shape[0] != n:
		return fmt.Errorf("%w: %s: %q has shape %v, want [%d]", checkpoint.ErrCorrupt, file, name, t.Shape, n)
	case t.Offset > a || t.Offset+len(t.Data) < b:
		return fmt.Errorf("%w: %s holds elements [%d, %d) of %q, not [%d, %d)", checkpoint.ErrCorrupt, file, t.Offset, t.Offset+len(t.Data), name, a, b)
	}
	for i, v := range t.Data[a-t.Offset : b-t.Offset] {
		dst[stride*i+at] = v
	}
	return nil
}

// Consolidate turns the sharded checkpoint in dir into one full checkpoint
// file at path, as SaveFull would have written it (every parameter and
// optimizer state value whole, the same fields and metadata), without a
// job: it reads every shard file, so it needs the memory of the whole
// model. parallel.DataParallel and a single process load the result.
func Consolidate(dir, path string) error {
	meta, err := checkpoint.Load(filepath.Join(dir, metaFile))
	if err != nil {
		return err
	}
	lay, err := parseLayout(meta.Meta)
	if err != nil {
		return err
	}
	// Parameters in the saved order, then each one's state values.
	var names []string
	byName := map[string][]float32{}
	var params [][2]json.RawMessage
	_ = json.Unmarshal([]byte(meta.Meta[keyParams]), &params) // parseLayout checked it
	for _, pr := range params {
		var name string
		_ = json.Unmarshal(pr[0], &name)
		n := lay.params[name].len
		names = append(names, name)
		byName[name] = make([]float32, n)
		for _, s := range lay.names {
			byName[name+"."+s] = make([]float32, n)
		}
	}
	filled := 0
	for r := range lay.world {
		file := shardFile(lay.id, r, lay.world)
		sf, err := checkpoint.Load(filepath.Join(dir, file))
		if errors.Is(err, iofs.ErrNotExist) {
			return fmt.Errorf("%w: shard file %s is missing", checkpoint.ErrCorrupt, file)
		}
		if err != nil {
			return err
		}
		if sf.Meta[keyID] != lay.id || sf.Meta[keyRank] != strconv.Itoa(r) {
			return fmt.Errorf("%w: %s is not rank %d of save %s", checkpoint.ErrCorrupt, file, r, lay.id)
		}
		for _, t := range sf.Tensors {
			dst, ok := byName[t.Name]
			if !ok || len(t.Shape) != 1 || t.Shape[0] != len(dst) || t.Offset+len(t.Data) > len(dst) {
				return fmt.Errorf("%w: %s: unexpected tensor %q", checkpoint.ErrCorrupt, file, t.Name)
			}
			copy(dst[t.Offset:], t.Data)
			filled += len(t.Data)
		}
	}
	out := &checkpoint.Checkpoint{Step: meta.Step, Epoch: meta.Epoch, RNG: meta.RNG, Meta: maps.Clone(meta.Meta)}
	want := 0
	for _, name := range names {
		out.Add(name, byName[name])
		want += len(byName[name])
		for _, s := range lay.names {
			out.Add(name+"."+s, byName[name+"."+s])
			want += len(byName[name])
		}
	}
	if filled != want {
		return fmt.Errorf("%w: the shard files hold %d values, the layout %d", checkpoint.ErrCorrupt, filled, want)
	}
	for _, k := range []string{keyID, keyWorld} {
		delete(out.Meta, k)
	}
	out.Tensors = append(out.Tensors, meta.Tensors...)
	return checkpoint.Save(path, out)
}
