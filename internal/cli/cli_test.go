package cli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRunCodesAndLines(t *testing.T) {
	ran := false
	work := func(err error) func() error {
		return func() error { ran = true; return err }
	}
	for _, c := range []struct {
		parse, run error
		code       int
		ran        bool
		says       string
	}{
		{nil, nil, OK, true, ""},
		{flag.ErrHelp, nil, OK, false, ""},
		{fmt.Errorf("parsing: %w", flag.ErrHelp), nil, OK, false, ""},
		{errors.New("-np 0: want 1 or more"), nil, BadUsage, false, "tool: -np 0: want 1 or more\n"},
		{nil, errors.New("rank 1: lost"), Failed, true, "tool: rank 1: lost\n"},
	} {
		ran = false
		var stderr bytes.Buffer
		assert.Equal(t, c.code, Run("tool", &stderr, c.parse, work(c.run)), "%v %v", c.parse, c.run)
		assert.Equal(t, c.ran, ran, "%v %v", c.parse, c.run)
		assert.Equal(t, c.says, stderr.String())
	}
}
