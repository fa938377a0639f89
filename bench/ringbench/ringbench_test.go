package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ringo-ml/ringo/collective"
	"github.com/ringo-ml/ringo/internal/localjob"
)

// TestMain lets the test binary be a rank that spawn starts (it re-executes
// its own binary with RINGO_* set): then it is ringbench, not the tests.
func TestMain(m *testing.M) {
	if os.Getenv("RINGBENCH_TEST_CHILD") == "1" && localjob.InJob() {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func testOptions(t *testing.T, args ...string) options {
	t.Helper()
	base := []string{"-s", "1,7,64,1000", "-n", "2", "-w", "1", "-min-sample", "0"}
	o, err := parseArgs(append(base, args...), io.Discard)
	require.NoError(t, err)
	return o
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A small sweep of every collective, over several types and reductions, on
// 3 ranks (not a power of two) of the mem transport: every row is checked
// and right, and its numbers are consistent.
func TestSweepEveryCollectiveIsRight(t *testing.T) {
	cases := []struct{ coll, dtype, op string }{
		{"allreduce", "float32", "sum"}, {"allreduce", "float64", "avg"}, {"allreduce", "int8", "sum"},
		{"allreduce", "uint8", "prod"}, {"allreduce", "int64", "min"}, {"allreduce", "uint32", "max"},
		{"allreduce", "float32", "avg"}, {"allreduce", "float64", "prod"},
		{"reducescatter", "float32", "sum"}, {"reducescatter", "int32", "max"}, {"reducescatter", "uint64", "prod"},
		{"reducescatter", "float64", "avg"},
		{"allgather", "int8", "sum"}, {"allgather", "float64", "sum"},
		{"broadcast", "uint8", "sum"}, {"broadcast", "float32", "sum"},
		{"reduce", "float32", "sum"}, {"reduce", "int64", "prod"}, {"reduce", "float64", "avg"},
		{"alltoall", "int8", "sum"}, {"alltoall", "float32", "sum"},
		{"gather", "uint32", "sum"}, {"scatter", "float64", "sum"},
	}
	for i, tc := range cases {
		algo := []string{"auto", "ring", "doubling"}[i%3]
		t.Run(tc.coll+"/"+tc.dtype+"/"+tc.op+"/"+algo, func(t *testing.T) {
			o := testOptions(t, "-np", "3", "-inproc", "-transport", "mem", "-o", tc.coll, "-d", tc.dtype, "-r", tc.op, "-root", "2", "--algo", algo)
			rows, err := sweepInProcess(ctxT(t), &o, nil)
			require.NoError(t, err)
			require.Len(t, rows, 4)
			for _, r := range rows {
				assert.Zero(t, r.Wrong, "%+v", r)
				assert.Equal(t, tc.dtype, r.Type)
				assert.Positive(t, r.TimeUS)
				assert.LessOrEqual(t, r.MinUS, r.TimeUS)
				assert.GreaterOrEqual(t, r.P90US, r.TimeUS)
				assert.Equal(t, 2, r.Samples)
				assert.Equal(t, 1, r.Inner)
				assert.InDelta(t, float64(r.Bytes)/(r.TimeUS*1e-6)/1e9, r.AlgBW, 1e-9*r.AlgBW+1e-12)
				assert.InDelta(t, r.AlgBW*busFactor(tc.coll, 3), r.BusBW, 1e-12)
				if tc.coll != "allreduce" && tc.coll != "broadcast" && tc.coll != "reduce" {
					assert.Zero(t, r.Count%3, "whole blocks per rank")
				}
			}
		})
	}
}

// The same over TCP loopback between goroutines, with batching and a budget.
func TestSweepOverTCP(t *testing.T) {
	o := testOptions(t, "-np", "2", "-inproc", "-s", "4,4K", "-min-sample", "200us", "-budget", "20ms")
	var seen []int
	rows, err := sweepInProcess(ctxT(t), &o, func(done, total int, _ int64) {
		assert.Equal(t, 2, total)
		seen = append(seen, done)
	})
	require.NoError(t, err)
	require.Len(t, rows, 2)
	assert.Equal(t, []int{0, 1, 2}, seen)
	for _, r := range rows {
		assert.Zero(t, r.Wrong)
		assert.GreaterOrEqual(t, r.Samples, 10)
		assert.GreaterOrEqual(t, r.Inner, 1)
	}
}

// The check is real: a corrupted element of the result is counted.
func TestCheckCountsWrongElements(t *testing.T) {
	for _, coll := range []string{"allreduce", "reducescatter", "allgather", "broadcast", "reduce", "alltoall", "gather", "scatter"} {
		t.Run(coll, func(t *testing.T) {
			o := testOptions(t, "-o", coll, "-d", "int32", "-root", "1")
			comms, err := collective.Local(2)
			require.NoError(t, err)
			defer func() {
				for _, c := range comms {
					c.Close()
				}
			}()
			bs := []*bench[int32]{newBench[int32](comms[0], &o, 64), newBench[int32](comms[1], &o, 64)}
			var wg sync.WaitGroup
			for _, b := range bs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					b.fill()
					assert.NoError(t, b.call(ctxT(t)))
				}()
			}
			wg.Wait()
			assert.Zero(t, bs[1].verify())
			out := bs[1].send
			if bs[1].recv != nil {
				out = bs[1].recv
			}
			out[3]++
			out[len(out)-1] = sentinel
			assert.Equal(t, int64(2), bs[1].verify())
		})
	}
}

func TestBusFactor(t *testing.T) {
	assert.Equal(t, 1.0, busFactor("allreduce", 2))
	assert.Equal(t, 1.5, busFactor("allreduce", 4))
	assert.Equal(t, 0.75, busFactor("reducescatter", 4))
	assert.Equal(t, 0.75, busFactor("allgather", 4))
	assert.Equal(t, 0.5, busFactor("allgather", 2))
	assert.Equal(t, 1.0, busFactor("broadcast", 8))
	assert.Equal(t, 1.0, busFactor("reduce", 8))
	assert.Equal(t, 0.75, busFactor("alltoall", 4))
	assert.Equal(t, 0.75, busFactor("gather", 4))
	assert.Equal(t, 0.75, busFactor("scatter", 4))
	assert.Equal(t, 0.0, busFactor("allreduce", 1))
}

func TestParseArgs(t *testing.T) {
	o, err := parseArgs(nil, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, "allreduce", o.collective)
	assert.Equal(t, "float32", o.dtype)
	assert.Equal(t, "sum", o.op)
	assert.Equal(t, "ringo-tcp", o.label)
	assert.Equal(t, "auto", o.algo)
	assert.False(t, o.algoSet)
	assert.Equal(t, int64(8), o.sizeList()[0])
	assert.Equal(t, int64(64<<20), o.sizeList()[len(o.sizeList())-1])
	assert.Len(t, o.sizeList(), 24)

	o, err = parseArgs([]string{"-b", "1K", "-e", "1MiB", "-f", "4", "-n", "7", "-w", "3", "-c", "0",
		"-o", "all_gather", "-d", "double", "-r", "MAX", "--transport", "tcp", "--algo", "ring", "-np", "4"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []int64{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20}, o.sizeList())
	assert.Equal(t, 7, o.iters)
	assert.Equal(t, 3, o.warmup)
	assert.Equal(t, 0, o.check)
	assert.Equal(t, "allgather", o.collective)
	assert.Equal(t, "float64", o.dtype)
	assert.Equal(t, "max", o.op)
	assert.Equal(t, 4, o.np)
	assert.Equal(t, "ring", o.algo)
	assert.True(t, o.algoSet)

	o, err = parseArgs([]string{"-s", "4,64,1K,16M"}, io.Discard)
	require.NoError(t, err)
	assert.Equal(t, []int64{4, 64, 1024, 16 << 20}, o.sizeList())

	for args, want := range map[string]string{
		"-o sendrecv":           "not available yet",
		"-o gossip":             "unknown collective",
		"-d bfloat16":           "not available yet",
		"-d complex":            "unknown type",
		"-d int32 -r avg":       "float32 and float64",
		"-r xor":                "unknown reduction",
		"--algo telepathy":      "unknown algorithm",
		"--transport mem":       "-inproc",
		"--transport udp":       "unknown",
		"-f 1":                  "factor",
		"-b 2K -e 1K":           "sizes",
		"-n 0":                  "sample",
		"-s 4,x":                "bad size",
		"stray":                 "unexpected arguments",
		"-b -5":                 "bad size",
		"--transport mem -np 0": "-inproc",
	} {
		_, err := parseArgs(strings.Fields(args), io.Discard)
		if assert.Error(t, err, args) {
			assert.Contains(t, err.Error(), want, args)
		}
	}
}

func TestRunExitCodes(t *testing.T) {
	var out, errb bytes.Buffer
	assert.Equal(t, 2, run(ctxT(t), []string{"-o", "sendrecv"}, &out, &errb))
	assert.Contains(t, errb.String(), "sendrecv: not available yet")
	assert.Equal(t, 2, run(ctxT(t), []string{"-np", "2", "-root", "2", "-o", "broadcast"}, &out, &errb))
	assert.Contains(t, errb.String(), "--root 2 is not one of the 2 ranks")
	assert.Equal(t, 0, run(ctxT(t), []string{"-h"}, &out, &errb))
	assert.Contains(t, errb.String(), "busbw")
}

// The table, and the CSV and JSON on stdout, of a whole in-process run.
func TestOutputs(t *testing.T) {
	args := []string{"-np", "2", "-inproc", "-transport", "mem", "-s", "8,1K", "-n", "3", "-w", "1", "-q", "--sim", "64"}
	var out, errb bytes.Buffer
	require.Equal(t, 0, run(ctxT(t), args, &out, &errb), errb.String())
	table := out.String()
	assert.Contains(t, table, "#wrong")
	assert.Contains(t, table, "# Avg bus bandwidth    : ")
	assert.Contains(t, table, "# Out of bounds values : 0 OK")
	assert.Contains(t, table, "--sim: alpha-beta model")
	assert.Regexp(t, `(?m)^\s+1024\s+256\s+float32\s+sum\s+-1\s+\S+\s+\S+\s+\S+\s+0$`, table)
	assert.Empty(t, errb.String(), "no progress bar when stderr is not a terminal")

	out.Reset()
	require.Equal(t, 0, run(ctxT(t), append(args, "--csv", "-", "--label", "mine"), &out, &errb), errb.String())
	recs, err := csv.NewReader(&out).ReadAll()
	require.NoError(t, err)
	require.Len(t, recs, 3)
	assert.Equal(t, []string{"library", "n", "bytes", "time_us", "algbw", "busbw"}, recs[0][:6])
	assert.Equal(t, csvHeader, recs[0])
	assert.Equal(t, []string{"mine", "2", "8"}, recs[1][:3])
	assert.Equal(t, "1024", recs[2][2])
	for _, rec := range recs[1:] {
		require.Len(t, rec, len(csvHeader))
		for _, col := range []int{3, 4, 5} {
			v, err := strconv.ParseFloat(rec[col], 64)
			require.NoError(t, err)
			assert.Positive(t, v)
		}
		assert.Equal(t, "0", rec[13], "wrong")
	}

	out.Reset()
	require.Equal(t, 0, run(ctxT(t), append(args, "--json", "-", "-o", "allgather", "-d", "uint8"), &out, &errb), errb.String())
	var res result
	require.NoError(t, json.Unmarshal(out.Bytes(), &res))
	assert.Equal(t, 2, res.Ranks)
	assert.Equal(t, "goroutines", res.Mode)
	assert.Equal(t, "ringo-mem", res.Library)
	assert.Zero(t, res.WrongTotal)
	require.Len(t, res.Rows, 2)
	assert.Equal(t, "allgather", res.Rows[0].Collective)
	assert.Equal(t, "", res.Rows[0].Op)
	assert.InDelta(t, (res.Rows[0].BusBW+res.Rows[1].BusBW)/2, res.AvgBusBW, 1e-12)
}

// Standalone -np: ringbench starts its ranks as processes (here: this test
// binary, which TestMain turns into ringbench), rank 0 writes the files.
func TestSpawnProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	t.Setenv("RINGBENCH_TEST_CHILD", "1")
	csvFile, pngFile := filepath.Join(dir, "r.csv"), filepath.Join(dir, "r.png")
	o := testOptions(t, "-np", "2")
	args := []string{"-np", "2", "-s", "16,4K", "-n", "2", "-w", "1", "-q", "--csv", csvFile, "--plot", pngFile}
	require.NoError(t, spawn(ctxT(t), &o, args, io.Discard, io.Discard))
	data, err := os.ReadFile(csvFile)
	require.NoError(t, err)
	assert.Equal(t, 3, strings.Count(string(data), "\n"), string(data))
	assert.Contains(t, string(data), "ringo-tcp,2,4096,")
	st, err := os.Stat(pngFile)
	require.NoError(t, err)
	assert.Positive(t, st.Size())
}

// A rank that fails makes spawn fail, naming it.
func TestSpawnReportsFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	t.Setenv("RINGBENCH_TEST_CHILD", "1")
	o := testOptions(t, "-np", "2")
	// A CSV file in a directory that does not exist: rank 0 fails to write it.
	err := spawn(ctxT(t), &o, []string{"-np", "2", "-s", "16", "-n", "1", "-w", "0", "-q", "--csv", filepath.Join(t.TempDir(), "no", "r.csv")}, io.Discard, io.Discard)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "rank 0")
}

func TestFitModel(t *testing.T) {
	// Rows made by the ring model itself on 4 ranks: the fit finds it again.
	m := model{alpha: 20e-6, beta: 1e-9}
	var rows []row
	for s := int64(4); s <= 64<<20; s *= 4 {
		rows = append(rows, row{Bytes: s, TimeUS: m.ring(4, float64(s)) * 1e6})
	}
	got, err := fitModel("allreduce", 4, rows)
	require.NoError(t, err)
	assert.InEpsilon(t, m.alpha, got.alpha, 1e-6)
	assert.InEpsilon(t, m.beta, got.beta, 1e-6)
	// Ring wins for large buffers on few ranks; tree for tiny buffers on many.
	assert.Less(t, m.ring(4, 64<<20), m.tree(4, 64<<20))
	assert.Less(t, m.tree(4096, 8), m.ring(4096, 8))
	assert.InEpsilon(t, m.ring(8, 1<<20), m.hier(8, 1<<20), 1e-12, "one group is a plain ring")
	assert.InEpsilon(t, m.tree(16, 1<<20)/2, m.doubling(16, 1<<20), 1e-12)
	assert.Less(t, m.doubling(4096, 8), m.tree(4096, 8))

	_, err = fitModel("allreduce", 4, rows[:1])
	assert.Error(t, err)
	a, b := fitLine([]float64{1, 2, 3}, []float64{5, 5, 5})
	assert.InDelta(t, 5, a, 1e-9)
	assert.InDelta(t, 0, b, 1e-9)
	assert.Equal(t, []int{2, 8, 32, 128, 512, 2048, 4096}, simRanks(4096))
}

func TestUncheckedRows(t *testing.T) {
	var out, errb bytes.Buffer
	require.Equal(t, 0, run(ctxT(t), []string{"-np", "1", "-inproc", "-s", "8", "-n", "1", "-c", "0"}, &out, &errb), errb.String())
	assert.Regexp(t, `(?m)^\s+8\s+2\s+float32.*N/A$`, out.String())
	assert.Contains(t, out.String(), "# Out of bounds values : not checked")
}

func TestHumanAndProgress(t *testing.T) {
	assert.Equal(t, "64 MiB", humanBytes(64<<20))
	assert.Equal(t, "1000 B", humanBytes(1000))
	var buf bytes.Buffer
	p := &progressBar{w: &buf}
	p.update(1, 4, 1024)
	p.update(4, 4, 0)
	p.done()
	assert.Equal(t, fmt.Sprintf("\r[%s%s] 1/4 sizes, running 1 KiB\033[K\r[%s] 4/4 sizes\033[K\r\033[K",
		strings.Repeat("#", 7), strings.Repeat(".", 23), strings.Repeat("#", 30)), buf.String())
	var none *progressBar
	none.update(1, 2, 3) // a nil bar draws nothing
	none.done()
}
