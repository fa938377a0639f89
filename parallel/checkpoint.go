package parallel

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/rankdesc"
)

// SaveCheckpoint writes a checkpoint of the model to path: ck's metadata and
// tensors (e.g. the optimizer's state, named) plus every parameter's Data,
// named by its Name (ck itself is not changed; a tensor of ck named like a
// parameter is an error). It is a collective call: rank 0 writes the file
// (atomically: see checkpoint.Save), the other ranks' ck is not used, and
// every rank returns rank 0's error, if any. Call it between steps.
func (dp *DataParallel) SaveCheckpoint(ctx context.Context, path string, ck *checkpoint.Checkpoint) error {
	var msg []byte
	if dp.comm.Rank() == 0 {
		if err := dp.save(path, ck); err != nil {
			msg = []byte(err.Error())
		}
	}
	if err := rankdesc.Broadcast(ctx, dp.comm, &msg); err != nil {
		return fmt.Errorf("parallel: SaveCheckpoint on rank %d: %w", dp.comm.Rank(), err)
	}
	if len(msg) > 0 {
		return fmt.Errorf("parallel: SaveCheckpoint on rank %d: rank 0 could not save %s: %s", dp.comm.Rank(), path, msg)
	}
	return nil
}

func (dp *DataParallel) save(path string, ck *checkpoint.Checkpoint) error {
	var out checkpoint.Checkpoint
	if ck != nil {
		out = *ck
	}
	out.Tensors = make([]checkpoint.Tensor, 0, len(dp.params)+len(out.Tensors))
	for _, p := range dp.params {
		out.Add(p.Name, p.Data)
	}
	if ck != nil {
		for _, t := range ck.Tensors {
			if _, ok := dp.byName(t.Name); ok {
				return fmt.Errorf("%w: tensor %q has the name of a parameter", checkpoint.ErrInvalid, t.Name)
			}
			out.Tensors = append(out.Tensors, t)
		}
	}
	return checkpoint.Save(path, &out)
}

func (dp *DataParallel) byName(name string) (*Param, bool) {
	for _, p := range dp.params {
		if p.Name == name {
			return p, true
		}
	}
	return nil, false
}

// LoadCheckpoint reads the checkpoint at path on rank 0 (only rank 0 needs
// the file), sends it to every rank, copies every parameter's tensor into
// p.Data, and returns the whole checkpoint (metadata, optimizer tensors) for
// the caller to restore the rest. It is a collective call. Every rank
// returns the same error: one matching fs.ErrNotExist when there is no file
// (start from scratch), checkpoint.ErrCorrupt for a damaged one, and
// checkpoint.ErrInvalid when a parameter is missing or has another length
// (then no parameter is changed).
func (dp *DataParallel) LoadCheckpoint(ctx context.Context, path string) (*checkpoint.Checkpoint, error) {
	// status: 0 the file follows, 1 there is none, 2 rank 0's error follows.
	status := []int64{0}
	var data []byte
	if dp.comm.Rank() == 0 {
		b, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			status[0] = 1
		case err != nil:
			status[0], data = 2, []byte(err.Error())
		default:
			data = b
		}
	}
	fail := func(err error) (*checkpoint.Checkpoint, error) {
		return nil, fmt.Errorf("parallel: LoadCheckpoint on rank %d: %w", dp.comm.Rank(), err)
	}
	if err := collective.Broadcast(ctx, dp.comm, status, 0); err != nil {
		return fail(err)
	}
	if err := rankdesc.Broadcast(ctx, dp.comm, &data); err != nil {
		return fail(err)
	}
	switch status[0] {
	case 1:
		return fail(fmt.Errorf("rank 0 has no checkpoint %s: %w", path, fs.ErrNotExist))
	case 2:
		return fail(fmt.Errorf("rank 0 could not read %s: %s", path, data))
	}
	// Every rank decodes the same bytes: every rank reaches the same verdict.
	ck, err := checkpoint.Unmarshal(data)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", path, err))
	}
	tensors := make([]*checkpoint.Tensor, len(dp.params))
	for i, p := range dp.params {
		if tensors[i], err = ck.Lookup(p.Name, len(p.Data)); err != nil {
			return fail(fmt.Errorf("%s: %w", path, err))
		}
	}
	for i, p := range dp.params {
		copy(p.Data, tensors[i].Data)
	}
	return ck, nil
}
