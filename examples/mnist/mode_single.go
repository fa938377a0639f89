package main

import (
	"context"
	"fmt"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/parallel"
)

// single trains the whole model in one process: the reference every other
// mode must agree with.
type single struct {
	*replica
}

// singleMode is -mode single: no flags of its own.
type singleMode struct{ noFlags }

func (singleMode) newTrainer(_ context.Context, j *job) (trainer, error) { return newSingle(j) }

func newSingle(j *job) (*single, error) {
	if j.size() != 1 {
		return nil, fmt.Errorf("-mode single runs as one process, not as one of %d ranks (use -mode ddp)", j.size())
	}
	r, err := newReplica(j)
	if err != nil {
		return nil, err
	}
	return &single{r}, nil
}

func (s *single) step(_ context.Context, global []int) (float64, error) {
	loss, err := s.forwardBackward(global, nn.GlobalMeanScale(len(global), 1), nil)
	if err != nil {
		return 0, err
	}
	return loss, s.opt.Step()
}

func (s *single) sum(_ context.Context, v float64) (float64, error) { return v, nil }

func (s *single) evaluate(context.Context) (int, error) { return s.correct(0, s.test.Len()) }

func (s *single) params(context.Context) ([]*parallel.Param, error) { return s.model.Params(), nil }

func (s *single) save(_ context.Context, path string, ck *checkpoint.Checkpoint) error {
	for _, p := range s.model.Params() {
		ck.Add(p.Name, p.Data)
	}
	s.addState(ck)
	return checkpoint.Save(path, ck)
}

func (s *single) load(_ context.Context, path string) (*checkpoint.Checkpoint, error) {
	ck, err := checkpoint.Load(path)
	if err != nil {
		return nil, err
	}
	for _, p := range s.model.Params() {
		if err := ck.CopyTo(p.Name, p.Data); err != nil {
			return nil, err
		}
	}
	return ck, s.restoreState(ck)
}

func (s *single) close() error { return nil }
