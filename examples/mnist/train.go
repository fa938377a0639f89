package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ringo-ml/ringo/checkpoint"
	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/mnist"
	"github.com/ringo-ml/ringo/internal/nn"
	"github.com/ringo-ml/ringo/parallel"
)

// job is what one rank trains with.
type job struct {
	opts        options
	comm        *collective.Comm // nil in -mode single
	train, test *mnist.Set
	out         io.Writer // the result lines (rank 0's stdout)
	log         io.Writer // progress notes (stderr)
}

func (j *job) rank() int {
	if j.comm == nil {
		return 0
	}
	return j.comm.Rank()
}

func (j *job) size() int {
	if j.comm == nil {
		return 1
	}
	return j.comm.Size()
}

// trainer is what a -mode trains with: how the ranks turn each global
// batch into an optimizer step, and how they evaluate, save and restore the
// model. Each mode makes its own (modes.go); the loop around it (train) is
// the same for all.
type trainer interface {
	// step trains on one global batch (indices into the training set) and
	// returns this rank's part of the batch's summed loss.
	step(ctx context.Context, global []int) (float64, error)
	// sum adds v over the ranks.
	sum(ctx context.Context, v float64) (float64, error)
	// evaluate returns how many test images the model classifies
	// correctly, counted over the whole test set.
	evaluate(ctx context.Context) (int, error)
	// params returns the whole model's parameters in forward order, the
	// same on every rank (for the hash).
	params(ctx context.Context) ([]*parallel.Param, error)
	// save writes ck plus the parameters and optimizer state to path;
	// load restores them from path and returns ck (an error matching
	// fs.ErrNotExist when there is no checkpoint). Both are collective.
	save(ctx context.Context, path string, ck *checkpoint.Checkpoint) error
	load(ctx context.Context, path string) (*checkpoint.Checkpoint, error)
	close() error
}

// train runs the job: resume from a checkpoint if there is one, then the
// epochs, printing the loss, the test accuracy and the parameters' hash.
func train(ctx context.Context, j *job) error {
	o := &j.opts
	t, err := newTrainer(ctx, j)
	if err != nil {
		return err
	}
	defer t.close()

	n := j.train.Len()
	if o.trainSamples > 0 {
		n = o.trainSamples
	}
	perEpoch := stepsPerEpoch(n, o.batch)
	meta := checkpointMeta(o, n)
	path := ""
	step := 0
	if o.checkpoint != "" {
		if err := os.MkdirAll(o.checkpoint, 0o755); err != nil {
			return err
		}
		path = filepath.Join(o.checkpoint, "mnist.ckpt")
		ck, err := t.load(ctx, path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("resuming from %s: %w", path, err)
		default:
			if err := checkMeta(ck.Meta, meta); err != nil {
				return fmt.Errorf("resuming from %s: %w", path, err)
			}
			step = int(ck.Step)
			if j.rank() == 0 {
				fmt.Fprintf(j.log, "mnist: resumed from %s at epoch %d, step %d\n", path, ck.Epoch, step)
			}
		}
	}
	if j.rank() == 0 {
		fmt.Fprintf(j.log, "mnist: %s on %d rank(s), MLP %v, global batch %d, %d samples, %d epoch(s)\n",
			o.mode, j.size(), o.layers, o.batch, n, o.epochs)
	}
	start := time.Now()
	for epoch := step / perEpoch; epoch < o.epochs; epoch++ {
		if o.steps > 0 && step >= o.steps {
			break
		}
		order := sampleOrder(o.seed, epoch, n)
		for b := step % perEpoch; b < perEpoch; b++ {
			if o.steps > 0 && step >= o.steps {
				break
			}
			global := globalBatch(order, b, o.batch)
			loss, err := t.step(ctx, global)
			if err != nil {
				return fmt.Errorf("step %d: %w", step+1, err)
			}
			step++
			if step%o.logEvery == 0 {
				// Every rank decides alike from the step number, so every
				// rank makes this call.
				total, err := t.sum(ctx, loss)
				if err != nil {
					return err
				}
				if j.rank() == 0 {
					fmt.Fprintf(j.out, "step=%d loss=%.6g\n", step, total/float64(len(global)))
				}
			}
		}
		correct, err := t.evaluate(ctx)
		if err != nil {
			return err
		}
		if j.rank() == 0 {
			fmt.Fprintf(j.out, "epoch=%d test_accuracy=%.4f\n", epoch+1, float64(correct)/float64(j.test.Len()))
		}
		if path != "" && step%perEpoch == 0 {
			ck := &checkpoint.Checkpoint{Step: int64(step), Epoch: int64(epoch + 1), Meta: meta}
			if err := t.save(ctx, path, ck); err != nil {
				return fmt.Errorf("saving %s: %w", path, err)
			}
		}
	}
	params, err := t.params(ctx)
	if err != nil {
		return err
	}
	if j.rank() == 0 {
		fmt.Fprintf(j.log, "mnist: %d steps in %.1fs\n", step, time.Since(start).Seconds())
		fmt.Fprintf(j.out, "params_sha256=%s\n", hashParams(params))
	}
	return nil
}

// hashParams is the SHA-256 of every parameter's values, in order, as
// little-endian float32 bytes.
func hashParams(params []*parallel.Param) string {
	h := sha256.New()
	var b [4]byte
	for _, p := range params {
		for _, v := range p.Data {
			binary.LittleEndian.PutUint32(b[:], math.Float32bits(v))
			h.Write(b[:])
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// checkpointMeta records the flags a checkpoint's numbers depend on; a run
// resumes only from a checkpoint of the same model, data and optimizer. The
// number of ranks and the mode are not among them: any mode may resume any
// other's checkpoint.
func checkpointMeta(o *options, samples int) map[string]string {
	return map[string]string{
		"model":     fmt.Sprint(o.layers),
		"batch":     strconv.Itoa(o.batch),
		"seed":      strconv.FormatUint(o.seed, 10),
		"samples":   strconv.Itoa(samples),
		"optimizer": o.optimizer,
		"lr":        strconv.FormatFloat(o.lr, 'g', -1, 64),
		"momentum":  strconv.FormatFloat(o.momentum, 'g', -1, 64),
	}
}

func checkMeta(got, want map[string]string) error {
	for k, v := range want {
		if got[k] != v {
			return fmt.Errorf("the checkpoint is of a run with %s %q, this one has %q", k, got[k], v)
		}
	}
	return nil
}

// newOptimizer is the -optimizer rule.
func newOptimizer(o *options) nn.Optimizer {
	lr := float32(o.lr)
	switch o.optimizer {
	case "adam":
		return nn.NewAdam(lr)
	case "adamw":
		return nn.NewAdamW(lr, 0.01)
	}
	return &nn.SGD{LR: lr, Momentum: float32(o.momentum)}
}
