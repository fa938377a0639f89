package checkpoint

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"math"
	"slices"
)

const (
	magic   = "RINGOCKP"
	version = 1
	// prefix is magic, version and header length; the header's CRC follows
	// the header.
	prefix      = 16
	float32Type = 1
	maxDims     = 8
	// maxElements bounds a tensor's element count (and its shape's
	// product), so that sizes can never overflow: 2^48 float32s is 1 PiB.
	maxElements = 1 << 48
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Whole reports whether t is a whole tensor, not a slice of a bigger one.
func (t *Tensor) Whole() bool {
	n, _ := t.elements()
	return t.Offset == 0 && n == len(t.Data)
}

// elements is the product of t's shape (len(Data) for a nil shape).
func (t *Tensor) elements() (int, error) {
	if t.Shape == nil {
		return len(t.Data), nil
	}
	if len(t.Shape) > maxDims {
		return 0, fmt.Errorf("%d dimensions, at most %d", len(t.Shape), maxDims)
	}
	n := 1
	for _, d := range t.Shape {
		if d < 0 || d > maxElements || d != 0 && n > maxElements/d {
			return 0, fmt.Errorf("shape %v out of range", t.Shape)
		}
		n *= d
	}
	return n, nil
}

// shape is t's shape as stored: a nil Shape is one dimension of len(Data).
func (t *Tensor) shape() []int {
	if t.Shape == nil {
		return []int{len(t.Data)}
	}
	return t.Shape
}

// Add appends name as a whole one-dimensional tensor holding data (not
// copied: Save and Marshal read data when they run).
func (c *Checkpoint) Add(name string, data []float32) {
	c.Tensors = append(c.Tensors, Tensor{Name: name, Data: data})
}

// Find returns the tensor called name, or nil.
func (c *Checkpoint) Find(name string) *Tensor {
	for i := range c.Tensors {
		if c.Tensors[i].Name == name {
			return &c.Tensors[i]
		}
	}
	return nil
}

// Lookup returns the whole tensor called name, which must have n values;
// otherwise an error matching ErrInvalid says what differs.
func (c *Checkpoint) Lookup(name string, n int) (*Tensor, error) {
	t := c.Find(name)
	switch {
	case t == nil:
		return nil, fmt.Errorf("%w: no tensor %q", ErrInvalid, name)
	case !t.Whole():
		return nil, fmt.Errorf("%w: tensor %q holds elements [%d, %d) of a tensor of shape %v, not all of it", ErrInvalid, name, t.Offset, t.Offset+len(t.Data), t.Shape)
	case len(t.Data) != n:
		return nil, fmt.Errorf("%w: tensor %q has %d values, want %d", ErrInvalid, name, len(t.Data), n)
	}
	return t, nil
}

// CopyTo copies the whole tensor called name into dst, which must have its
// length: the way to restore a parameter or an optimizer's state in place.
func (c *Checkpoint) CopyTo(name string, dst []float32) error {
	t, err := c.Lookup(name, len(dst))
	if err != nil {
		return err
	}
	copy(dst, t.Data)
	return nil
}

// header encodes c's header (the layout in the package documentation),
// with each tensor's CRC, after checking that c can be written.
func (c *Checkpoint) header() ([]byte, error) {
	b := binary.LittleEndian.AppendUint64(nil, uint64(c.Step))
	b = binary.LittleEndian.AppendUint64(b, uint64(c.Epoch))
	if len(c.RNG) > math.MaxUint32 {
		return nil, fmt.Errorf("%w: RNG state of %d bytes", ErrInvalid, len(c.RNG))
	}
	b = appendBytes(b, c.RNG)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(c.Meta)))
	for _, k := range slices.Sorted(maps.Keys(c.Meta)) {
		b = appendBytes(b, []byte(k))
		b = appendBytes(b, []byte(c.Meta[k]))
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(c.Tensors)))
	seen := make(map[string]bool, len(c.Tensors))
	for i := range c.Tensors {
		t := &c.Tensors[i]
		total, err := t.elements()
		switch {
		case err != nil:
			return nil, fmt.Errorf("%w: tensor %q: %v", ErrInvalid, t.Name, err)
		case t.Name == "":
			return nil, fmt.Errorf("%w: tensor #%d has no name", ErrInvalid, i)
		case seen[t.Name]:
			return nil, fmt.Errorf("%w: two tensors are called %q", ErrInvalid, t.Name)
		case t.Offset < 0 || t.Offset > total || len(t.Data) > total-t.Offset:
			return nil, fmt.Errorf("%w: tensor %q: elements [%d, %d) are outside its shape %v", ErrInvalid, t.Name, t.Offset, t.Offset+len(t.Data), t.shape())
		}
		seen[t.Name] = true
		b = appendBytes(b, []byte(t.Name))
		shape := t.shape()
		b = append(b, float32Type, byte(len(shape)))
		for _, d := range shape {
			b = binary.LittleEndian.AppendUint64(b, uint64(d))
		}
		b = binary.LittleEndian.AppendUint64(b, uint64(t.Offset))
		b = binary.LittleEndian.AppendUint64(b, uint64(len(t.Data)))
		b = binary.LittleEndian.AppendUint32(b, dataCRC(t.Data))
	}
	if len(b) > math.MaxUint32 {
		return nil, fmt.Errorf("%w: a header of %d bytes", ErrInvalid, len(b))
	}
	return b, nil
}

func appendBytes(b, s []byte) []byte {
	return append(binary.LittleEndian.AppendUint32(b, uint32(len(s))), s...)
}

// chunk is how many values are encoded at a time.
const chunk = 16 << 10

// forEachChunk calls fn with data's little-endian bytes, chunk by chunk,
// in a buffer it reuses.
func forEachChunk(data []float32, fn func([]byte) error) error {
	buf := make([]byte, 4*min(len(data), chunk))
	for len(data) > 0 {
		n := min(len(data), chunk)
		for i, v := range data[:n] {
			binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
		}
		if err := fn(buf[:4*n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func dataCRC(data []float32) uint32 {
	var crc uint32
	_ = forEachChunk(data, func(b []byte) error {
		crc = crc32.Update(crc, castagnoli, b)
		return nil
	})
	return crc
}

// WriteTo writes c to w in the format of the package documentation.
func (c *Checkpoint) WriteTo(w io.Writer) (int64, error) {
	hdr, err := c.header()
	if err != nil {
		return 0, err
	}
	head := make([]byte, 0, prefix+len(hdr)+4)
	head = append(head, magic...)
	head = binary.LittleEndian.AppendUint32(head, version)
	head = binary.LittleEndian.AppendUint32(head, uint32(len(hdr)))
	head = append(head, hdr...)
	head = binary.LittleEndian.AppendUint32(head, crc32.Checksum(head, castagnoli))
	n, err := w.Write(head)
	written := int64(n)
	if err != nil {
		return written, err
	}
	for i := range c.Tensors {
		err := forEachChunk(c.Tensors[i].Data, func(b []byte) error {
			n, err := w.Write(b)
			written += int64(n)
			return err
		})
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// Marshal encodes c in the format of the package documentation.
func Marshal(c *Checkpoint) ([]byte, error) {
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Unmarshal decodes a checkpoint, refusing anything but a whole, intact one
// (ErrCorrupt, ErrVersion). The tensors' data is copied out of b.
func Unmarshal(b []byte) (*Checkpoint, error) {
	if len(b) < prefix+4 {
		return nil, fmt.Errorf("%w: %d bytes, too short for a checkpoint", ErrCorrupt, len(b))
	}
	if string(b[:8]) != magic {
		return nil, fmt.Errorf("%w: not a checkpoint (the file starts with %q, not %q)", ErrCorrupt, b[:8], magic)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != version {
		return nil, fmt.Errorf("%w %d (this code reads version %d)", ErrVersion, v, version)
	}
	h := uint64(binary.LittleEndian.Uint32(b[12:]))
	if uint64(len(b)) < prefix+h+4 {
		return nil, fmt.Errorf("%w: truncated: %d bytes, the header alone needs %d", ErrCorrupt, len(b), prefix+h+4)
	}
	end := prefix + int(h)
	if got, want := crc32.Checksum(b[:end], castagnoli), binary.LittleEndian.Uint32(b[end:]); got != want {
		return nil, fmt.Errorf("%w: the header's CRC is %08x, the file says %08x", ErrCorrupt, got, want)
	}
	type record struct {
		count int
		crc   uint32
	}
	r := &headerReader{b: b[prefix:end]}
	c := &Checkpoint{Step: int64(r.u64()), Epoch: int64(r.u64())}
	if rng := r.bytes(); len(rng) > 0 {
		c.RNG = bytes.Clone(rng)
	}
	nmeta := r.count(8) // each pair takes at least its two lengths
	var last string
	for k := range nmeta {
		key, value := string(r.bytes()), string(r.bytes())
		if r.err == nil && k > 0 && key <= last {
			r.fail("metadata keys are not in increasing order (%q after %q)", key, last)
		}
		if c.Meta == nil {
			c.Meta = make(map[string]string, nmeta)
		}
		c.Meta[key], last = value, key
	}
	ntensors := r.count(4 + 2 + 8 + 8 + 4)
	records := make([]record, 0, ntensors)
	var dataBytes uint64
	seen := make(map[string]bool, ntensors)
	for range ntensors {
		t := Tensor{Name: string(r.bytes())}
		if dtype := r.u8(); r.err == nil && dtype != float32Type {
			r.fail("tensor %q has element type %d; only 1 (float32) is defined", t.Name, dtype)
		}
		ndim := int(r.u8())
		if r.err == nil && ndim > maxDims {
			r.fail("tensor %q has %d dimensions, at most %d", t.Name, ndim, maxDims)
		}
		t.Shape = make([]int, 0, min(ndim, maxDims))
		for range ndim {
			t.Shape = append(t.Shape, int(min(r.u64(), maxElements+1)))
		}
		offset, count, crc := r.u64(), r.u64(), r.u32()
		if r.err != nil {
			break
		}
		total, err := t.elements()
		switch {
		case t.Name == "":
			r.fail("a tensor has no name")
		case seen[t.Name]:
			r.fail("two tensors are called %q", t.Name)
		case err != nil:
			r.fail("tensor %q: %v", t.Name, err)
		case offset > uint64(total) || count > uint64(total)-offset:
			r.fail("tensor %q: elements [%d, %d) are outside its shape %v", t.Name, offset, offset+count, t.Shape)
		}
		if r.err != nil {
			break
		}
		seen[t.Name] = true
		t.Offset = int(offset)
		dataBytes += 4 * count // at most 2^50 per tensor, 2^32 tensors: no overflow
		records = append(records, record{int(count), crc})
		c.Tensors = append(c.Tensors, t)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d bytes after the last tensor's entry", len(r.b))
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorrupt, r.err)
	}
	data := b[end+4:]
	switch {
	case uint64(len(data)) < dataBytes:
		return nil, fmt.Errorf("%w: truncated: %d bytes of tensor data, the header lists %d", ErrCorrupt, len(data), dataBytes)
	case uint64(len(data)) > dataBytes:
		return nil, fmt.Errorf("%w: %d bytes after the last tensor's data", ErrCorrupt, uint64(len(data))-dataBytes)
	}
	for i, rec := range records {
		raw := data[:4*rec.count]
		data = data[4*rec.count:]
		if got := crc32.Checksum(raw, castagnoli); got != rec.crc {
			return nil, fmt.Errorf("%w: tensor %q: its data's CRC is %08x, the header says %08x", ErrCorrupt, c.Tensors[i].Name, got, rec.crc)
		}
		vals := make([]float32, rec.count)
		for j := range vals {
			vals[j] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*j:]))
		}
		c.Tensors[i].Data = vals
	}
	return c, nil
}

// headerReader reads the header's fields; after the first error it returns
// zeros.
type headerReader struct {
	b   []byte
	err error
}

func (r *headerReader) fail(format string, a ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, a...)
	}
}

func (r *headerReader) take(n uint64) []byte {
	if r.err != nil {
		return nil
	}
	if uint64(len(r.b)) < n {
		r.fail("ends early (%d bytes left, %d needed)", len(r.b), n)
		return nil
	}
	s := r.b[:n]
	r.b = r.b[n:]
	return s
}

func (r *headerReader) u8() uint8 {
	if s := r.take(1); s != nil {
		return s[0]
	}
	return 0
}

func (r *headerReader) u32() uint32 {
	if s := r.take(4); s != nil {
		return binary.LittleEndian.Uint32(s)
	}
	return 0
}

func (r *headerReader) u64() uint64 {
	if s := r.take(8); s != nil {
		return binary.LittleEndian.Uint64(s)
	}
	return 0
}

func (r *headerReader) bytes() []byte { return r.take(uint64(r.u32())) }

// count reads a count of entries of at least minSize bytes each, refusing
// one the rest of the header cannot hold (before anything is allocated
// for it).
func (r *headerReader) count(minSize int) int {
	n := uint64(r.u32())
	if r.err == nil && n*uint64(minSize) > uint64(len(r.b)) {
		r.fail("lists %d entries, more than its %d remaining bytes can hold", n, len(r.b))
		return 0
	}
	return int(n)
}
