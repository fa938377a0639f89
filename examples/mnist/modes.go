package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
)

// A mode is one way to train (-mode NAME): the flags of its own, their
// check, and the trainer it makes. Each mode lives in a file of its own
// (mode_NAME.go) and has a row in modes; nothing else names it.
type mode interface {
	// flags defines the mode's own flags on fs, into the mode's fields.
	flags(fs *flag.FlagSet)
	// check checks them once the command line is parsed, whatever -mode
	// is (o.mode), and fills in the defaults that depend on other flags.
	check(o *options) []error
	// newTrainer makes this rank's trainer.
	newTrainer(ctx context.Context, j *job) (trainer, error)
}

// modes are the modes in the order -help names them, each with what
// makes a mode with its flags unset (one per parse of a command line).
var modes = []struct {
	name, about string
	new         func() mode
}{
	{"single", "one process", func() mode { return singleMode{} }},
	{"ddp", "data parallel", func() mode { return &ddpMode{} }},
	{"fsdp", "sharded data parallel", func() mode { return &fsdpMode{} }},
	{"pipeline", "model split into -stages; -np/-stages replicas", func() mode { return &pipelineMode{} }},
	{"ps", "parameter servers", func() mode { return &psMode{} }},
}

// defineModes defines every mode's flags on fs, and -mode itself into
// o.mode, and returns the modes by name.
func defineModes(fs *flag.FlagSet, o *options) map[string]mode {
	byName := make(map[string]mode, len(modes))
	var about []string
	for _, m := range modes {
		byName[m.name] = m.new()
		byName[m.name].flags(fs)
		about = append(about, fmt.Sprintf("%s (%s)", m.name, m.about))
	}
	fs.StringVar(&o.mode, "mode", "ddp", "how to train: "+orList(about))
	return byName
}

// checkModes checks -mode and every mode's flags.
func checkModes(o *options) []error {
	var errs []error
	if o.modes[o.mode] == nil {
		var names []string
		for _, m := range modes {
			names = append(names, m.name)
		}
		errs = append(errs, fmt.Errorf("-mode %q: want %s", o.mode, orList(names)))
	}
	for _, m := range modes {
		errs = append(errs, o.modes[m.name].check(o)...)
	}
	return errs
}

// newTrainer makes the trainer of the job's -mode.
func newTrainer(ctx context.Context, j *job) (trainer, error) {
	m := j.opts.modes[j.opts.mode]
	if m == nil {
		return nil, fmt.Errorf("unknown mode %q", j.opts.mode)
	}
	return m.newTrainer(ctx, j)
}

// orList is "a, b or c".
func orList(items []string) string {
	if len(items) < 2 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " or " + items[len(items)-1]
}

// checker collects the errors of failed checks.
type checker []error

func (c *checker) check(ok bool, format string, args ...any) {
	if !ok {
		*c = append(*c, fmt.Errorf(format, args...))
	}
}

// noFlags is a mode's part for a mode without flags of its own.
type noFlags struct{}

func (noFlags) flags(*flag.FlagSet)    {}
func (noFlags) check(*options) []error { return nil }
