package main

import (
	"bytes"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCompressionAndDataFlags(t *testing.T) {
	o := testOptions(t, "-compression", "bf16", "-data", "rows90")
	require.Equal(t, "bf16", o.compression)
	require.Equal(t, "rows90", o.data)
	require.Equal(t, "ringo-tcp-bf16", o.label)
	for _, bad := range [][]string{{"-compression", "gzip"}, {"-data", "ones"}} {
		_, err := parseArgs(bad, io.Discard)
		require.Error(t, err, "%v", bad)
	}
}

// TestCompressedSweep: a checked sweep with every codec and data pattern
// finds no wrong element, and reports what the encoder did.
func TestCompressedSweep(t *testing.T) {
	for _, tc := range [][]string{
		{"-compression", "s2", "-data", "sparse90"},
		{"-compression", "zstd", "-data", "rows90"},
		{"-compression", "bf16", "-data", "random"},
		{"-compression", "s2", "-data", "noise", "-d", "uint32", "-r", "sum"},
	} {
		var out, errb bytes.Buffer
		args := append([]string{"-np", "3", "-inproc", "-transport", "mem", "-s", "4M", "-n", "2", "-w", "1", "-r", "avg", "-algo", "ring", "-q"}, tc...)
		require.Equal(t, 0, run(ctxT(t), args, &out, &errb), "%v: %s", tc, errb.String())
		require.Contains(t, out.String(), " 0\n", "%v: no wrong element:\n%s", tc, out.String())
	}
}
